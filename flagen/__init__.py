"""flagen: a kernel compiler for linear-attention recurrences.

IR (`flagen.ir`) -> codegen (`flagen.codegen`, Jinja templates in `flagen/templates`)
-> generated Triton modules (`generated/`, or the on-disk cache for user variants)
-> runtime (`flagen.runtime`: launchers and autograd) -> `fla` (FLA's public API).

Importing `flagen` (and running a built-in op) imports neither sympy nor Jinja: the IR names
below are loaded from `flagen.ir` when first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_IR_NAMES = ("Decay", "Input", "Readout", "Recurrence", "Shape", "SpecError", "head_index")
_SUBMODULES = ("cli", "codegen", "ir", "reference", "runtime")

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from flagen.ir import Decay, Input, Readout, Recurrence, Shape, SpecError, head_index  # noqa: F401


def __getattr__(name: str):  # PEP 562: the IR (and sympy with it) only when first touched
    if name in _IR_NAMES:
        value = getattr(importlib.import_module("flagen.ir"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"flagen.{name}")
    else:
        raise AttributeError(f"module 'flagen' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_IR_NAMES) | set(_SUBMODULES))


def compile(spec):  # noqa: A001 - the verb users expect
    """The op for ``spec``: a callable ``op(q, k, v, **inputs, scale=..., initial_state=...,
    output_final_state=..., cu_seqlens=...) -> (o, final_state)`` with ``op.decode(...)``.
    A spec may not take a built-in variant's name unless it is that variant (SpecError)."""
    from flagen.runtime.op import get_op
    return get_op(spec)


__all__ = ["Decay", "Input", "Readout", "Recurrence", "Shape", "SpecError", "head_index", "compile", "__version__"]
