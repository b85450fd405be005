"""Record the signatures of FLA 0.6.0's public ops that ``fla.ops`` re-exposes, into
``tests/records/fla060_op_signatures.json`` (read by tests/test_op_arguments.py; nothing imports
upstream FLA at test time).

Upstream is never installed into the project's venv: it goes into a directory of its own, and
this script runs in a separate process with that directory first on ``sys.path``::

    cd <repo root>
    python3 -m pip download --no-deps fla-core==0.6.0 flash-linear-attention==0.6.0 -d .whl
    .venv/bin/python -m pip install --no-deps --target <DIR> .whl/*.whl
    .venv/bin/python tests/records/record_fla_signatures.py <DIR>

(``<DIR>`` can also come from the environment: ``FLA_UPSTREAM=<DIR>``.) Upstream needs torch,
triton, einops and transformers, which the venv has. The script refuses to run if ``import fla``
does not resolve to ``<DIR>`` (our own ``fla`` is installed editable in the venv).

For every op it records where upstream defines it, the modules that export it, its parameters
(name, kind, default repr) and the names its body reads out of ``**kwargs`` (``head_first``,
``chunk_size``, ``transpose_state_layout``: accepted by upstream without being parameters).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path

VERSION = "0.6.0"
OUT = Path(__file__).resolve().parent / "fla060_op_signatures.json"

# Our fla.ops.__all__, each with the subpackage we export it from (fla/ops/<family>/).
OPS = {
    "chunk_retention": "retention",
    "chunk_linear_attn": "linear_attn",
    "chunk_simple_gla": "simple_gla",
    "chunk_lightning_attn": "lightning_attn",
    "chunk_gla": "gla",
    "chunk_rwkv6": "rwkv6",
    "chunk_delta_rule": "delta_rule",
    "chunk_gated_delta_rule": "gated_delta_rule",
    "chunk_kda": "kda",
    "chunk_dplr_delta_rule": "generalized_delta_rule",
    "chunk_rwkv7": "rwkv7",
    "fused_recurrent_retention": "retention",
    "fused_recurrent_linear_attn": "linear_attn",
    "fused_recurrent_simple_gla": "simple_gla",
    "fused_recurrent_gla": "gla",
    "fused_recurrent_rwkv6": "rwkv6",
    "fused_recurrent_delta_rule": "delta_rule",
    "fused_recurrent_gated_delta_rule": "gated_delta_rule",
    "fused_recurrent_kda": "kda",
    "fused_recurrent_dplr_delta_rule": "generalized_delta_rule",
    "fused_recurrent_rwkv7": "rwkv7",
}
# Upstream ops we do not export but whose signatures say what FLA's family offers (the recurrent
# counterpart of chunk_lightning_attn: does the family have `reverse`?).
RELATED = {"fused_recurrent_lightning_attn": "lightning_attn"}


def _kwargs_keys(fn) -> list[str]:
    """String keys the body reads from its ``**kwargs``: kwargs.pop/get('x'), kwargs['x'], 'x' in kwargs."""
    var_kw = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.VAR_KEYWORD]
    if not var_kw:
        return []
    name = var_kw[0]
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    keys = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == name
                and node.func.attr in ("pop", "get") and node.args and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name
              and isinstance(node.slice, ast.Constant)):
            keys.add(node.slice.value)
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))
              and isinstance(node.left, ast.Constant) and isinstance(node.comparators[0], ast.Name)
              and node.comparators[0].id == name):
            keys.add(node.left.value)
    return sorted(k for k in keys if isinstance(k, str))


def _param(p: inspect.Parameter) -> dict:
    out = {"name": p.name, "kind": p.kind.name}
    if p.default is not p.empty:
        out["default"] = repr(p.default)
    return out


def record(upstream: str) -> dict:
    upstream = os.path.realpath(upstream)
    sys.path[:] = [upstream] + [p for p in sys.path if p not in ("", os.getcwd(), str(Path(__file__).parents[2]))]
    os.environ.setdefault("TRITON_INTERPRET", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fla = importlib.import_module("fla")
        ops = importlib.import_module("fla.ops")
    if not os.path.realpath(fla.__file__).startswith(upstream + os.sep):
        sys.exit(f"`import fla` gave {fla.__file__}, not the upstream copy under {upstream}")
    if getattr(fla, "__version__", None) != VERSION:
        sys.exit(f"upstream fla is {getattr(fla, '__version__', '?')}, expected {VERSION}")
    entries, related = {}, {}
    for name, family in {**OPS, **RELATED}.items():
        exported = []
        for mod in ("fla.ops", f"fla.ops.{family}"):
            try:
                if getattr(importlib.import_module(mod), name, None) is not None:
                    exported.append(mod)
            except ImportError:
                pass
        fn = getattr(ops, name, None)
        if fn is None:
            (related if name in RELATED else entries)[name] = {"missing": True, "exported_from": exported}
            continue
        (related if name in RELATED else entries)[name] = {
            "defined_in": inspect.unwrap(fn).__module__,
            "exported_from": exported,
            "parameters": [_param(p) for p in inspect.signature(fn).parameters.values()],
            "kwargs_keys": _kwargs_keys(fn),
        }
    return {
        "fla_version": VERSION,
        "source": f"fla-core=={VERSION} and flash-linear-attention=={VERSION} wheels "
                  "(tests/records/record_fla_signatures.py)",
        "ops": entries,
        "related": related,
    }


def _dump(data: dict) -> str:
    """JSON with one line per parameter (readable diffs)."""
    text = json.dumps(data, indent=1)
    # fold each parameter object onto one line
    return re.sub(r"\{\n\s+(\"name\"[^{}]*?)\n\s+\}",
                  lambda m: "{" + re.sub(r",\n\s+", ", ", m.group(1)) + "}", text)


def main(argv):
    upstream = argv[1] if len(argv) > 1 else os.environ.get("FLA_UPSTREAM")
    if not upstream:
        sys.exit(__doc__)
    data = record(upstream)
    OUT.write_text(_dump(data) + "\n")
    print(f"wrote {len(data['ops'])} ops to {OUT.name}")


if __name__ == "__main__":
    main(sys.argv)
