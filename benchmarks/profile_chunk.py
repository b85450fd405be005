"""Where the time of a chunked op goes, and how it moves with the kernels' tiles (GPU).

    python benchmarks/profile_chunk.py [--ops chunk_gla,chunk_simple_gla] [--shape B,T,H,D] [--dot bf16]

Prints the CUDA time per kernel of one forward+backward (torch.profiler) and the forward and
forward+backward times. Tile sweeps: `flagen tune`. ``--dot`` (an experiment, not a setting:
the results are not checked) gives every product of the delta-rule kernels that precision, to
see what the precisions of chunked_delta.DOT_PRECISION cost.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from benchmarks.bench_chunk import fla_function, make_inputs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="chunk_gla,chunk_simple_gla")
    p.add_argument("--shape", default="4,2048,16,128")
    p.add_argument("--dot", choices=["bf16", "tf32", "tf32x3", "bf16x3"], default=None)
    args = p.parse_args()
    if args.dot:
        from benchmarks.ablate_delta import force_precision
        force_precision(args.dot)
    B, T, H, D = (int(x) for x in args.shape.split(","))
    for name in args.ops.split(","):
        fn = fla_function(name)
        a, kw, grads = make_inputs(name, B, T, H, D, torch, F)
        do = torch.randn_like(a["v"])

        def fwd_bwd():
            fn(**a, **kw)[0].backward(do)
            for x in grads:  # no gradient accumulation in the profile
                x.grad = None

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


if __name__ == "__main__":
    main()
