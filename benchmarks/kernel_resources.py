"""Registers, spills and shared memory of the generated chunked kernels, compiled for a GPU
without one: Triton compiles for an sm_90 target on any machine, and the cubin's resource
usage (cuobjdump, shipped with Triton) says what each kernel costs in registers and local
memory. Spills are the first suspect when a kernel gets slower, and this checks them in
seconds, before any device time is spent. The compile time is the CPU's share of a first call
(with TRITON_CACHE_DIR pointing at an empty folder; a warm cache makes it ~0).

    python benchmarks/kernel_resources.py --variants gla,rwkv6 [--K 128 --V 128] [--dtype bf16]
    python benchmarks/kernel_resources.py --variants gla --modules OTHER_TREE/generated

The tiles, warps, stages and chunk sizes are the runtime's (flagen.runtime.chunked). The
result depends on the Triton version that compiles: run it with the device's (3.6), e.g. a
triton 3.6 wheel installed into a folder put first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import tempfile
import time

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flagen.codegen.build import GENERATED_DIR
from flagen.runtime import chunked

# fp32 buffers of the runtime (states given or returned, the normaliser's sums and divisors)
FP32_POINTERS = {"h0", "ht", "dht", "dh0", "w", "den", "z", "z0", "zt", "dz", "dzt", "dz0", "dq", "dk"}
INTS = {"T", "NT", "NC", "NS"}
INDEX_POINTERS = {"cu_seqlens", "chunk_indices", "chunk_offsets"}
# kernel -> (TILES kind, pass whose chunk size it runs with)
KINDS = {"chunk_fwd_h": ("h", 0), "chunk_fwd_o": ("o", 0), "chunk_bwd_dh": ("dh", 1), "chunk_bwd_dv": ("dv", 1),
         "chunk_bwd_dqk": ("dqk", 1)}
KINDS.update({f"{kernel}_exact": KINDS[kernel] for kernel in ("chunk_fwd_o", "chunk_bwd_dv", "chunk_bwd_dqk")})


def load_module(path: str):
    spec = importlib.util.spec_from_file_location(f"resources_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def usage(compiled) -> dict:
    """cuobjdump's resource usage of a compiled kernel ({"REG": registers per thread, "STACK":
    local memory per thread, mostly spills, ...}; strings). The chunked delta-rule kernels' are
    printed by tests/compile_offline.py --registers."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    line = next((line.strip() for line in out.splitlines() if "REG:" in line), "")
    return dict(part.split(":") for part in line.split() if ":" in part)


def resources(module, kernel: str, K: int, V: int, dtype: torch.dtype) -> str:
    kind, pass_ = KINDS[kernel]
    fn = module.KERNELS[kernel]
    BT = chunked.chunk_sizes(module, None)[pass_]
    BK, BV, launch = chunked.tiles(kind, K, V, module.DECAY, dtype.itemsize)
    DT = chunked.dot_dtype(dtype)[0]
    data = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[dtype]
    state = "*bf16" if DT == tl.bfloat16 else "*fp32"
    consts = dict(H=16, HV=16, K=K, V=V, BT=BT, BK=BK, BV=BV, DT=DT, BC=chunked.SUB_CHUNK, IS_VARLEN=False,
                  USE_H0=False, STORE_HT=False, USE_DHT=False, STORE_DH0=False, USE_Z0=False, USE_DZT=False,
                  FB=chunked.FLAG_BLOCK)
    consts = {n: v for n, v in consts.items() if n in fn.arg_names}
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in INTS:
            signature[name] = "i32"
        elif name == "scale":
            signature[name] = "fp32"
        elif name in INDEX_POINTERS:
            signature[name] = "*i32"
        elif name == "strong":
            signature[name] = "*i8"
        elif name in ("h", "dh"):
            signature[name] = state
        elif name in FP32_POINTERS or name.startswith("grad_") or name in dict(module.INPUTS):
            signature[name] = "*fp32"  # gates and parameters are fp32, as the tests give them
        else:
            signature[name] = data
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, consts), target=GPUTarget("cuda", 90, 64),
                              options=dict(num_warps=launch["num_warps"], num_stages=launch.get("num_stages", 3)))
    seconds = time.perf_counter() - start
    fields = usage(compiled)
    return (f"| {BT} | {BK} | {BV} | {launch['num_warps']} | {launch.get('num_stages', '-')} "
            f"| {fields.get('REG', '?')} | {fields.get('STACK', '?')} | {compiled.metadata.shared} | {seconds:.1f} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="gla,rwkv6,simple_gla,retention,linear_attn")
    p.add_argument("--modules", default=str(GENERATED_DIR), help="a folder of generated modules")
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    a = p.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    print(f"Triton {triton.__version__}, sm_90, {a.dtype}, K={a.K}, V={a.V}; STACK is spilled bytes per thread.\n")
    print("| variant | kernel | BT | BK | BV | warps | stages | registers | stack | shared | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in a.variants.split(","):
        module = load_module(os.path.join(a.modules, f"{variant}.py"))
        for kernel in KINDS:
            if kernel in module.KERNELS:  # (the exact passes: per-key path only)
                print(f"| {variant} | {kernel} {resources(module, kernel, a.K, a.V, dtype)}")


if __name__ == "__main__":
    main()
