"""Render a spec into the source of its generated module (Jinja over flagen/templates).

The same spec always renders byte-identical source: everything in the template context is
derived deterministically from the spec (sympy's canonical ordering, CSE with numbered
temporaries, inputs in declaration order).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import jinja2
import sympy as sp

import flagen
from flagen.codegen.printer import HELPERS, LOG2E, derivatives, lower
from flagen.ir.spec import Decay, Recurrence, Shape, head_index

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
MODULE_TEMPLATE = "module.py.j2"

# Layouts of the chunked backward's parameter gradients: per K tile partials where a gradient
# sums over keys, per chunk partials where it sums over tokens (the runtime reduces them).
_CHUNK_GRAD_LAYOUT = {
    Shape.TOKEN: "[NK, B*T, HV]",
    Shape.TOKEN_KEY: "[B*T, HV, K]",
    Shape.HEAD: "[NK, NC, HV]",
    Shape.HEAD_KEY: "[NC, HV, K]",
}

# ... and of the chunked delta rule's: whole over K (one program takes every K tile of its
# chunk), per chunk partials where a gradient sums over tokens.
_DELTA_GRAD_LAYOUT = {
    Shape.TOKEN: "[B*T, HV]",
    Shape.TOKEN_KEY: "[B*T, HV, K]",
    Shape.HEAD: "[NC, HV]",
    Shape.HEAD_KEY: "[NC, HV, K]",
}

_GRAD_LAYOUT = {
    Shape.TOKEN: "[NV, B, T, HV]",
    Shape.TOKEN_KEY: "[NV, B, T, HV, K]",
    Shape.HEAD: "[NV, N, HV]",
    Shape.HEAD_KEY: "[NV, N, HV, K]",
}


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@functools.lru_cache(maxsize=1)
def template_hash() -> str:
    """Hash of every template's text and of the code that fills them in (this module and the
    printer): part of each module's header and of cache keys."""
    h = hashlib.sha256()
    codegen = Path(__file__).resolve().parent
    for path in sorted(TEMPLATE_DIR.glob("*.j2")) + [codegen / "render.py", codegen / "printer.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _names(spec: Recurrence) -> dict[str, str]:
    names = {i.name: f"b_{i.name}" for i in spec.inputs}
    names[head_index.name] = "b_head_index"
    return names


def _expression(spec: Recurrence, expr: sp.Expr, prefix: str, vector: bool) -> tuple[dict, set[str]]:
    """Forward value and sympy derivatives of one parametrisation, lowered to Triton."""
    names = _names(spec)
    assign, (value,), helpers = lower([expr], names, prefix)
    wrt = [s for s in sorted(expr.free_symbols, key=lambda s: s.name)
           if s != head_index and spec.input(s.name).shape is not Shape.CONST]
    dassign, dvalues, dhelpers = lower(derivatives(expr, wrt), names, prefix + "_dtmp")
    dvars = {}
    for s, text in zip(wrt, dvalues):
        dvars[s.name] = f"{prefix}_d_{s.name}"
        dassign.append((dvars[s.name], text))
    return {
        "text": sp.sstr(expr), "assign": assign, "value": value, "dassign": dassign, "dvars": dvars,
        "vector": vector,
    }, helpers | dhelpers


def _chain(spec: Recurrence, name: str, per_key: bool, parts: list[tuple[dict, str]]) -> str | None:
    """The gradient of raw input ``name`` from the gradients of the gate and of beta (``b_dgate``, ``b_dbeta_t``)."""
    terms = []
    for expr, upstream in parts:
        if expr is None or name not in expr["dvars"]:
            continue
        term = f"{upstream} * {expr['dvars'][name]}"
        if expr["vector"]:
            # padded keys (K < BK) must not leak into the gradient, even as 0 * inf
            term = f"tl.where(m_k, {term}, 0.0)"
            if not per_key:
                term = f"tl.sum({term})"
        terms.append(term)
    return " + ".join(terms) if terms else None


def context(spec: Recurrence) -> dict:
    helpers: set[str] = set()
    gate = beta = None
    if spec.gate is not None:
        gate, h = _expression(spec, spec.gate, "b_gate", vector=spec.decay is Decay.KEY)
        helpers |= h
    if spec.beta is not None:
        beta, h = _expression(spec, spec.beta, "b_beta", vector=spec.beta_per_key)
        helpers |= h

    inputs, grads = [], []
    structural = {"a", "b"} if spec.low_rank else set()
    if spec.bonus:
        structural.add("u")
    for i in spec.inputs:
        row = {"name": i.name, "shape": i.shape.value, "per_token": i.shape.per_token,
               "per_key": i.shape.per_key, "const": i.shape is Shape.CONST}
        inputs.append(row)
        if i.shape is Shape.CONST:
            continue
        chain = None if i.name in structural else _chain(
            spec, i.name, i.shape.per_key, [(gate, "b_dgate"), (beta, "b_dbeta_t")])
        grads.append(dict(row, chain=chain, grad_layout=_GRAD_LAYOUT[i.shape]))

    # The decay families' chunked kernels cover the recurrences without the delta rule or a
    # low-rank term; chunk_delta.py.j2 (WY form) the delta rule with an inclusive readout and a
    # beta per token (the gate's and beta's per-token inputs apart: each kernel loads them in
    # its shape), and diagonal plus low rank with a per-key decay.
    gate_inputs = {s.name for s in spec.gate.free_symbols} if spec.gate is not None else set()
    beta_inputs = {s.name for s in spec.beta.free_symbols} if spec.beta is not None else set()
    token_inputs = {i.name for i in spec.inputs if i.shape.per_token}
    chunked = not spec.delta and not spec.low_rank
    wy_form = (spec.delta and not spec.low_rank) or (spec.low_rank and not spec.delta and spec.decay is Decay.KEY)
    chunk_delta = (wy_form and not spec.bonus and not spec.normalize and not spec.beta_per_key
                   and not (gate_inputs & beta_inputs & token_inputs))
    chunk_head_inputs = [row for row in inputs if not row["per_token"]]
    chunk_grads = [dict(g, dvar=gate["dvars"].get(g["name"]) if gate else None,
                        chunk_layout=_CHUNK_GRAD_LAYOUT[spec.input(g["name"]).shape]) for g in grads]

    delta_grads = [dict(g, gate_dvar=gate["dvars"].get(g["name"]) if gate else None,
                        beta_dvar=beta["dvars"].get(g["name"]) if beta else None,
                        delta_layout=_DELTA_GRAD_LAYOUT[spec.input(g["name"]).shape]) for g in grads]

    templates = ", ".join(sorted(p.name for p in TEMPLATE_DIR.glob("*.j2")))
    return {
        "name": spec.name,
        "doc": spec.doc,
        "ir_text": spec.ir_text(),
        "flagen_version": flagen.__version__,
        "templates": templates,
        "template_hash": template_hash(),
        "log2e": LOG2E,
        "inputs": inputs,
        "grads": grads,
        "input_table": repr(tuple((i.name, i.shape.value) for i in spec.inputs)),
        "grad_table": repr(tuple(g["name"] for g in grads)),
        "normalize": spec.normalize,
        "decay": spec.decay.value,
        "gate": gate,
        "gate_per_token": spec.gate_per_token,
        "gate_grads": bool(gate and gate["dvars"]),
        "uses_head_index": spec.gate is not None and head_index in spec.gate.free_symbols,
        "delta": spec.delta,
        "beta": beta,
        "beta_per_key": spec.beta_per_key,
        "low_rank": spec.low_rank,
        "bonus": spec.bonus,
        "qk_l2norm": spec.qk_l2norm,
        "helpers": [HELPERS[h] for h in sorted(helpers)],
        "chunked": chunked,
        "gq": "b_gcq" if spec.bonus else "b_gc",
        "causal": ">" if spec.bonus else ">=",
        "chunk_head_inputs": chunk_head_inputs,
        "gate_token_inputs": [row for row in inputs if row["per_token"] and row["name"] in gate_inputs],
        "chunk_grads": chunk_grads,
        "chunk_delta": chunk_delta,
        "beta_token_inputs": [row for row in inputs if row["per_token"] and row["name"] in beta_inputs],
        "delta_grads": delta_grads,
    }


def render(spec: Recurrence) -> str:
    """The Python source of ``spec``'s generated module."""
    return _environment().get_template(MODULE_TEMPLATE).render(**context(spec))
