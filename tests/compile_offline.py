"""Compile generated chunked delta-rule (and DPLR) kernels for a GPU target on a machine without one.

Catches what fails to compile for the target (Triton's lowering, shared memory, ptxas), not
what compiles to wrong code: run the GPU suite for that (tests/run_gpu.sh). Meant for a Triton
other than the project's (the GPU's, e.g. 3.6 for an H200), installed apart::

    python -m pip download --no-deps triton==3.6.0 -d .whl
    .venv/bin/python -m pip install --no-deps --target <DIR> .whl/triton-3.6.0-*.whl
    .venv/bin/python tests/compile_offline.py <DIR> [--dtypes=bf16,fp32] [variant ...]

The generated modules (generated/<variant>.py) are loaded by path with that Triton first on
sys.path. Every chunked delta-rule kernel is compiled for sm_90 in bf16, fp16 and fp32, with
head dims 128/128, 100/48 and 256/64, fixed-length and packed, with the runtime's tiles.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["delta_rule_l2norm", "gated_delta_rule_l2norm_gate_beta_sigmoid", "kda_l2norm_gate_beta_sigmoid",
            "kda_gate_lower_bound_beta_2sigmoid", "dplr"]
DIMS = [(128, 128), (100, 48), (256, 64)]
DTYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
STATE_ARGS = {"Tm", "P", "Pk", "Aak", "w", "u", "h", "v_new", "h0", "ht", "dh", "dv_new", "dvk", "dht", "dh0", "dqs",
              "dw", "dbc", "dkc", "sdh"}


def _tile(n, cap):
    return max(32, min(cap, 1 << (n - 1).bit_length()))


def compile_module(triton, path: Path, dtypes: dict, failures: list) -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    spec = importlib.util.spec_from_file_location(f"offline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = dict(module.INPUTS)
    count = 0
    for (K, V), (dname, dt), varlen in itertools.product(DIMS, dtypes.items(), (False, True)):
        for kind in ("wy", "fwd_h", "fwd_o", "bwd_dh", "bwd_dw", "bwd_wy"):
            fn = module.KERNELS[f"chunk_delta_{kind}"]
            state = kind in ("fwd_h", "bwd_dh")
            BK = _tile(K, 1 << 30) if state else _tile(K, 64)
            BV = _tile(V, 32) if state else _tile(V, 64)
            consts = dict(H=1, HV=2, K=K, V=V, BT=64, BK=BK, BV=BV, IS_VARLEN=varlen, USE_H0=True, STORE_HT=True,
                          USE_DHT=True, STORE_DH0=True)
            signature, constexprs = {}, {}
            for name in fn.arg_names:
                if name in consts:
                    signature[name], constexprs[name] = "constexpr", consts[name]
                elif name in ("q", "k", "v", "do", "o", "dv", "dq", "dk"):
                    signature[name] = dt
                elif name in STATE_ARGS or name.startswith("grad_"):
                    signature[name] = "*fp32"
                elif name in kinds:
                    signature[name] = "fp32" if kinds[name] == "const" else "*fp32"
                elif name in ("cu_seqlens", "chunk_indices", "chunk_offsets"):
                    if varlen:
                        signature[name] = "*i32"
                    else:
                        signature[name], constexprs[name] = "constexpr", None
                elif name == "scale":
                    signature[name] = "fp32"
                elif name == "T":
                    signature[name] = "i32"
                else:
                    raise KeyError(f"{fn.__name__}: no type for argument {name}")
            warps = 8 if state and BK >= 256 else 4
            label = f"{path.stem}.{kind} K{K} V{V} {dname}{' varlen' if varlen else ''}"
            try:
                triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=warps))
                count += 1
            except Exception:
                failures.append(label)
                print(f"FAILED {label}\n{traceback.format_exc(limit=3)}", flush=True)
    return count


def main(argv):
    sys.path.insert(0, argv[1])
    import triton
    assert Path(triton.__file__).is_relative_to(Path(argv[1]).resolve()), triton.__file__
    options = [a for a in argv[2:] if a.startswith("--")]
    dtypes = DTYPES
    for option in options:
        name, _, value = option.partition("=")
        if name != "--dtypes":
            raise SystemExit(f"unknown option {option}")
        dtypes = {d: DTYPES[d] for d in value.split(",")}
    failures: list = []
    total = 0
    for variant in [a for a in argv[2:] if not a.startswith("--")] or VARIANTS:
        total += compile_module(triton, ROOT / "generated" / f"{variant}.py", dtypes, failures)
        print(f"{variant}: compiled", flush=True)
    print(f"triton {triton.__version__}, sm_90: {total} compiled, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
