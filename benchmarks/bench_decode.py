"""Time one decoding step of Gated DeltaNet, in a process of its own (issue 14's decode numbers).

    python benchmarks/bench_decode.py --impl flagen --out decode_flagen.json
    python benchmarks/bench_decode.py --impl fla --fla-path DIR --out decode_fla.json

Both run FLA's API, ``fused_recurrent_gated_delta_rule`` with one token per sequence: q, k
[B, 1, H, D] bf16 (L2-normalised in the kernel), g, beta [B, 1, H], the initial state
[B, H, D, D] fp32 read and the final state returned, as FLA's layers decode. ``flagen`` also
times ``get_op(...).decode``, which updates the states in place. The state traffic floor (read
and write each state once, bytes / the GPU's copy bandwidth measured in the same run) is
reported beside the times. Each call is also captured in a CUDA graph and timed as graph
replays (``*_graph_ms``: the launch overhead gone, as a server decodes), or its capture error
recorded. Shapes: B_H_D, B1_H16_D128, B64_H16_D128, B256_H32_D128 by default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

SHAPES = [(1, 16, 128), (64, 16, 128), (256, 32, 128)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["flagen", "fla"], required=True)
    p.add_argument("--fla-path", help="directory holding upstream's unpacked `fla` package")
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES), help="BxHxD,...")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.impl == "fla":
        sys.path.insert(0, args.fla_path)
    import torch
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    dev = args.device
    if dev == "cuda":
        import triton.testing

        def bench(fn):
            return triton.testing.do_bench(fn, warmup=25, rep=200)
    else:  # (a smoke run through the interpreter: one call, wall time)
        import time

        def bench(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1000
    def graph_ms(fn):
        """Time ``fn`` as replays of a CUDA graph that captured it (or the capture's error)."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
        except Exception as e:  # (recorded: a path that cannot be captured is a result too)
            return f"capture failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return bench(graph.replay)

    rows = []
    for B, H, D in (tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")):
        gen = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(B, 1, H, D, device=dev, generator=gen, dtype=torch.bfloat16) for _ in range(3))
        g = F.logsigmoid(torch.randn(B, 1, H, device=dev, generator=gen))
        beta = torch.rand(B, 1, H, device=dev, generator=gen)
        h0 = torch.randn(B, H, D, D, device=dev, generator=gen)
        row = dict(shape=f"B{B}_H{H}_D{D}", state_bytes=2 * h0.numel() * 4)
        with torch.no_grad():
            def api():
                return fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                        output_final_state=True, use_qk_l2norm_in_kernel=True)
            row["fla_api_ms"] = bench(api)
            if dev == "cuda":
                row["fla_api_graph_ms"] = graph_ms(api)
            if args.impl == "flagen":
                from flagen.runtime.op import get_op
                op = get_op("gated_delta_rule_l2norm")
                state = h0.clone()
                def step():
                    return op.decode(q, k, v, state, g=g, beta=beta, check_indices=False)
                row["decode_in_place_ms"] = bench(step)
                if dev == "cuda":
                    row["decode_in_place_graph_ms"] = graph_ms(step)
            if dev == "cuda":
                # the floor: one read and one write of every state at the copy bandwidth
                a, b = torch.empty_like(h0), torch.empty_like(h0)
                row["state_copy_ms"] = bench(lambda: b.copy_(a))
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = dict(impl=args.impl, device=torch.cuda.get_device_name() if dev == "cuda" else dev,
               torch=torch.__version__)
    import triton
    env["triton"] = triton.__version__
    with open(args.out, "w") as f:
        json.dump(dict(env=env, results=rows), f, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
