"""A Recurrence as plain JSON data and back: what a model's ``config.json`` records of a user
variant, so that the model loads without the file that defined it.

The gate and beta are stored as sympy's text (``sympy.sstr``). Reading them back evaluates
text, so it is checked first: only numbers, the operators ``+ - * / **``, parentheses, commas,
the spec's own input names, ``head_index`` and the functions in FUNCTIONS may appear (no
attribute access, no other names), which leaves nothing to reach outside the expression.
"""

from __future__ import annotations

import re

import sympy as sp

from flagen.ir.functions import logsigmoid, sigmoid, softplus
from flagen.ir.spec import Decay, Input, Readout, Recurrence, Shape, SpecError, head_index

FUNCTIONS = {"sigmoid": sigmoid, "softplus": softplus, "logsigmoid": logsigmoid, "exp": sp.exp, "log": sp.log,
             "tanh": sp.tanh, "sqrt": sp.sqrt, "Abs": sp.Abs, "Max": sp.Max, "Min": sp.Min, "pi": sp.pi,
             "E": sp.E}
_TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|[-+*/(),]))")


def spec_to_dict(spec: Recurrence) -> dict:
    """``spec`` as JSON data (str, bool, lists)."""
    return dict(name=spec.name, inputs=[[i.name, i.shape.value, i.doc] for i in spec.inputs], decay=spec.decay.value,
                gate=sp.sstr(spec.gate) if spec.gate is not None else None, delta=spec.delta,
                beta=sp.sstr(spec.beta) if spec.beta is not None else None, low_rank=spec.low_rank,
                readout=spec.readout.value, normalize=spec.normalize, qk_l2norm=spec.qk_l2norm, doc=spec.doc)


def _expression(text: str, inputs: tuple[Input, ...], field: str) -> sp.Expr:
    """Parse a gate or beta text after checking that it holds nothing but an expression."""
    if not isinstance(text, str):
        raise SpecError(f"{field}: expected an expression's text, got {type(text).__name__}")
    names = {i.name: i.symbol for i in inputs} | {"head_index": head_index}
    pos = 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SpecError(f"{field}: unexpected {text[pos:pos + 10]!r} in {text!r}")
        if m["name"] is not None and m["name"] not in names and m["name"] not in FUNCTIONS:
            raise SpecError(f"{field}: unknown name {m['name']!r} in {text!r} (inputs {sorted(names)}, "
                            f"functions {sorted(FUNCTIONS)})")
        pos = m.end()
    return sp.sympify(text, locals={**FUNCTIONS, **names})


def spec_from_dict(data: dict) -> Recurrence:
    """The Recurrence that ``spec_to_dict`` wrote (validated as every spec is)."""
    if not isinstance(data, dict):
        raise SpecError(f"a recurrence's data must be a dict, got {type(data).__name__}")
    known = {"name", "inputs", "decay", "gate", "delta", "beta", "low_rank", "readout", "normalize", "qk_l2norm", "doc"}
    unknown = set(data) - known
    if unknown:
        raise SpecError(f"a recurrence's data has unknown keys {sorted(unknown)}")
    try:
        inputs = tuple(Input(name, Shape(shape), *doc) for name, shape, *doc in data.get("inputs", []))
        decay, readout = Decay(data.get("decay", "none")), Readout(data.get("readout", "inclusive"))
    except (TypeError, ValueError) as e:
        raise SpecError(f"a recurrence's inputs, decay or readout: {e}") from None
    gate = _expression(data["gate"], inputs, "gate") if data.get("gate") is not None else None
    beta = _expression(data["beta"], inputs, "beta") if data.get("beta") is not None else None
    return Recurrence(name=data.get("name"), inputs=inputs, decay=decay, gate=gate, delta=bool(data.get("delta")),
                      beta=beta, low_rank=bool(data.get("low_rank")), readout=readout,
                      normalize=bool(data.get("normalize")), qk_l2norm=bool(data.get("qk_l2norm")),
                      doc=data.get("doc", ""))
