"""Where the time of a chunked op goes, and how it moves with the kernels' tiles (GPU).

    python benchmarks/profile_chunk.py [--ops chunk_gla,chunk_simple_gla] [--sweep]

Prints the CUDA time per kernel of one forward+backward (torch.profiler) and, with
``--sweep``, forward+backward times for alternative (BK, BV, num_warps) per kernel kind.
"""

from __future__ import annotations

import argparse
import importlib
import itertools

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from benchmarks.bench_chunk import make_inputs
from flagen.runtime import chunked

SWEEP = {
    "o": [(128, 64, 4), (64, 64, 4), (128, 128, 8), (64, 128, 4)],
    "dv": [(128, 64, 4), (64, 64, 4), (128, 128, 8), (64, 128, 4)],
    "dqk": [(64, 64, 4), (128, 64, 8), (64, 64, 8), (64, 128, 8), (32, 64, 4)],
    "h": [(64, 64, 4), (64, 32, 4), (32, 64, 4), (128, 64, 8)],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="chunk_gla,chunk_simple_gla")
    p.add_argument("--shape", default="4,2048,16,128")
    p.add_argument("--sweep", action="store_true")
    args = p.parse_args()
    B, T, H, D = (int(x) for x in args.shape.split(","))
    for name in args.ops.split(","):
        fn = getattr(importlib.import_module(f"fla.ops.{name[len('chunk_'):]}"), name)
        a, kw, grads = make_inputs(name, B, T, H, D, torch, F)
        do = torch.randn_like(a["v"])

        def fwd_bwd():
            fn(**a, **kw)[0].backward(do)

        fwd_bwd()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fwd_bwd()
            torch.cuda.synchronize()
        print(f"== {name} B{B}_T{T}_H{H}_D{D}: CUDA time per fwd+bwd, by kernel")
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]:
            print(f"  {e.device_time_total / 10 / 1000:8.3f} ms  {e.key[:90]}")
        print(f"  fwd+bwd {do_bench(fwd_bwd, grad_to_none=grads):.3f} ms")
        if not args.sweep:
            continue
        base = dict(chunked.TILES)
        for kind, options in SWEEP.items():
            for opt in options:
                chunked.TILES.update(base)
                chunked.TILES[kind] = opt
                try:
                    t = do_bench(fwd_bwd, grad_to_none=grads)
                    print(f"  {kind}={opt}: fwd+bwd {t:.3f} ms", flush=True)
                except Exception as e:  # noqa: BLE001 - out of resources etc.
                    print(f"  {kind}={opt}: {type(e).__name__} {str(e)[:100]}", flush=True)
        chunked.TILES.update(base)


if __name__ == "__main__":
    main()
