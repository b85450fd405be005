"""Compile generated chunked delta-rule (and DPLR) kernels for a GPU target on a machine without one.

Catches what fails to compile for the target (Triton's lowering, ptxas) or needs more shared
memory than an H100/H200 block may have (227 KiB), not what compiles to wrong code: run the GPU suite for that (tests/run_gpu.sh). Meant for a Triton
other than the project's (the GPU's, e.g. 3.6 for an H200), installed apart::

    python -m pip download --no-deps triton==3.6.0 -d .whl
    .venv/bin/python -m pip install --no-deps --target <DIR> .whl/triton-3.6.0-*.whl
    .venv/bin/python tests/compile_offline.py <DIR> [--dtypes=bf16,fp32] [variant ...]

The generated modules (generated/<variant>.py) are loaded by path with that Triton first on
sys.path. Every chunked delta-rule kernel is compiled for sm_90 in bf16, fp16 and fp32, with
head dims 16/16, 128/128, 100/48, 256/64 and 256/256, chunk sizes 16, 32 and 64, fixed-length
and packed, with the runtime's tiles and launch options (chunked_delta.launch_config).

``--registers`` also prints each kernel's registers and stack (spilled) bytes per thread
(benchmarks/kernel_resources.usage, cuobjdump): a kernel at 255 registers that spills kilobytes
per thread is slow whatever else it does, and this shows it without a GPU.
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
DIMS = [(16, 16), (128, 128), (100, 48), (256, 64), (256, 256)]
CHUNK_SIZES = [16, 32, 64]
SMEM_LIMIT = 232448  # bytes a block may use on sm_90 (H100, H200)
LARGEST = [0, ""]  # the most shared memory a kernel took, and which
REGISTERS = []  # [True] with --registers
DTYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
STATE_ARGS = {"Tm", "P", "Pk", "Aak", "w", "u", "h", "v_new", "h0", "ht", "dh", "dv_new", "dvk", "dht", "dh0", "dqs",
              "dw", "dbc", "dkc", "sdh"}


def compile_module(triton, path: Path, dtypes: dict, failures: list) -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import torch

    from flagen.runtime.chunked_delta import launch_config, readout_dtype
    spec = importlib.util.spec_from_file_location(f"offline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = dict(module.INPUTS)
    count = 0
    for (K, V), BT, (dname, dt), varlen in itertools.product(DIMS, CHUNK_SIZES, dtypes.items(), (False, True)):
        # the forward's readout (P, h, v_new) in its own dtype: a second build where it is bf16
        readout = readout_dtype(K, V, BT, getattr(torch, TORCH_DTYPES[dname]), module.DECAY, None)
        builds = [(kind, "*fp32") for kind in ("wy", "fwd_h", "fwd_o", "bwd_dh", "bwd_dw", "bwd_wy")]
        if readout == torch.bfloat16:
            builds += [(kind, "*bf16") for kind in ("wy", "fwd_h", "fwd_o")]
        for kind, readout_type in builds:
            fn = module.KERNELS[f"chunk_delta_{kind}"]
            config = launch_config(kind, K, V, BT, getattr(torch, TORCH_DTYPES[dname]), module.DECAY)
            options = {n: config.pop(n) for n in ("num_warps", "num_stages") if n in config}
            consts = dict(H=1, HV=2, K=K, V=V, BT=BT, **config, IS_VARLEN=varlen, USE_H0=True, STORE_HT=True, STORE_T=True,
                          USE_DHT=True, STORE_DH0=True)
            signature, constexprs = {}, {}
            for name in fn.arg_names:
                if name in consts:
                    signature[name], constexprs[name] = "constexpr", consts[name]
                elif name in ("q", "k", "v", "do", "o", "dv", "dq", "dk"):
                    signature[name] = dt
                elif name in ("P", "h", "v_new"):
                    signature[name] = readout_type
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
            label = (f"{path.stem}.{kind} K{K} V{V} BT{BT} {dname}{' varlen' if varlen else ''}"
                     f"{' readout bf16' if readout_type == '*bf16' else ''}")
            try:
                # pointers 16-byte aligned, as the runtime specialises torch's tensors (wider
                # loads, and so the shared memory of the pipelined stages, depend on it)
                attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                         if signature[name].startswith("*")}
                kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                                        options=options)
                count += 1
            except Exception:
                failures.append(label)
                print(f"FAILED {label}\n{traceback.format_exc(limit=3)}", flush=True)
                continue
            LARGEST[:] = max(LARGEST, [kernel.metadata.shared, label])
            if REGISTERS:
                print(f"{label}: {kernel.metadata.shared} bytes of shared memory, {registers(kernel)}", flush=True)
            if kernel.metadata.shared > SMEM_LIMIT:
                failures.append(label)
                print(f"FAILED {label}: {kernel.metadata.shared} bytes of shared memory > {SMEM_LIMIT}", flush=True)
    return count


def registers(kernel) -> str:
    """Registers and local memory (spills) per thread of a compiled kernel (cuobjdump)."""
    from benchmarks.kernel_resources import usage
    fields = usage(kernel)
    return f"{fields.get('REG', '?')} registers, {fields.get('STACK', '?')} bytes of stack (spills) per thread"


def main(argv):
    sys.path.insert(0, argv[1])
    sys.path.insert(1, str(ROOT))
    import triton
    assert Path(triton.__file__).is_relative_to(Path(argv[1]).resolve()), triton.__file__
    options = [a for a in argv[2:] if a.startswith("--")]
    dtypes = DTYPES
    for option in options:
        name, _, value = option.partition("=")
        if name == "--dtypes":
            dtypes = {d: DTYPES[d] for d in value.split(",")}
        elif name == "--dims":  # e.g. --dims=256x64,100x48
            DIMS[:] = [tuple(int(x) for x in d.split("x")) for d in value.split(",")]
        elif name == "--chunk-sizes":
            CHUNK_SIZES[:] = [int(x) for x in value.split(",")]
        elif name == "--registers":
            REGISTERS[:] = [True]
        else:
            raise SystemExit(f"unknown option {option}")
    failures: list = []
    total = 0
    for variant in [a for a in argv[2:] if not a.startswith("--")] or VARIANTS:
        total += compile_module(triton, ROOT / "generated" / f"{variant}.py", dtypes, failures)
        print(f"{variant}: compiled", flush=True)
    print(f"triton {triton.__version__}, sm_90: {total} compiled, {len(failures)} failed; the most shared "
          f"memory: {LARGEST[0]} bytes ({LARGEST[1]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
