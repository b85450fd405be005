"""flagen: a kernel compiler for linear-attention recurrences.

IR (`flagen.ir`) -> codegen (`flagen.codegen`, Jinja templates in `flagen/templates`)
-> generated Triton modules (`generated/`, or the on-disk cache for user variants)
-> runtime (`flagen.runtime`: launchers and autograd) -> `fla` (FLA's public API).
"""

__version__ = "0.1.0"

from flagen.ir import Decay, Input, Readout, Recurrence, Shape, SpecError, head_index  # noqa: E402


def compile(spec):  # noqa: A001 - the verb users expect
    """The op for ``spec``: a callable ``op(q, k, v, **inputs, scale=..., initial_state=...,
    output_final_state=..., cu_seqlens=...) -> (o, final_state)`` with ``op.decode(...)``."""
    from flagen.runtime.op import get_op
    return get_op(spec)


__all__ = ["Decay", "Input", "Readout", "Recurrence", "Shape", "SpecError", "head_index", "compile", "__version__"]
