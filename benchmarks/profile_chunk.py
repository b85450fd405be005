"""Where the time of a chunked op goes, and how it moves with the kernels' tiles (GPU).

    python benchmarks/profile_chunk.py [--ops chunk_gla,chunk_simple_gla] [--shape B,T,H,D] [--sweep [--kinds h,o]]

Prints the CUDA time per kernel of one forward+backward (torch.profiler) and, with
``--sweep``, forward+backward times for alternative TILES entries (BK, BV, num_warps[, num_stages]).
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

# Alternatives per TILES entry. Timing only: a combination Triton miscompiles (see
# chunked.TILES) can time well and be wrong, so a winner must pass tests/run_gpu.sh first.
SWEEP = {
    "o": [(128, 64, 8), (64, 64, 8), (128, 128, 8)],
    "dv": [(128, 64, 8), (64, 64, 8), (128, 128, 8)],
    "dqk": [(64, 64, 8, 1), (64, 64, 4, 1), (128, 64, 8, 1), (64, 128, 8, 1)],
    "h": [(64, 64, 4), (64, 32, 4), (32, 64, 4), (32, 32, 4), (32, 32, 2), (64, 32, 2)],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="chunk_gla,chunk_simple_gla")
    p.add_argument("--shape", default="4,2048,16,128")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--kinds", default=",".join(SWEEP), help="TILES entries to sweep")
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
        with torch.no_grad():
            t_fwd = do_bench(lambda: fn(**a, **kw))
        print(f"  fwd {t_fwd:.3f} ms, fwd+bwd {do_bench(fwd_bwd, grad_to_none=grads):.3f} ms")
        if not args.sweep:
            continue
        base = dict(chunked.TILES)
        for kind in args.kinds.split(","):
            options = SWEEP[kind]
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
