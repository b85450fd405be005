"""A fresh process's first forward+backward of each chunked op, on an empty Triton cache (cold)
and again in another fresh process on the cache the first one filled (warm): issue 14's
"under 15 s cold, under 1 s warm".

    python benchmarks/bench_first_call.py --out first_call.json [--ops chunk_gla,...] [--shape B,T,H,D]

Each measurement is a process of its own (``--child``): importing torch and starting CUDA
(``start_s``) and the
import of ``fla`` (``import_s``) are timed apart from the call (``first_call_s``: the op's first
forward and backward, kernels compiled or loaded, synchronised). The Triton cache is one new
folder per op (TRITON_CACHE_DIR), flagen's own cache (user variants) a new folder too; the
built-ins' kernels come from ``generated/``. ``--device cpu`` runs the same calls on the
interpreter (a check of the script: nothing compiles there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OPS = ["chunk_retention", "chunk_simple_gla", "chunk_gla", "chunk_rwkv6", "chunk_delta_rule",
               "chunk_gated_delta_rule", "chunk_kda"]


def child(name: str, shape: tuple[int, ...], device: str, profile: int = 0) -> dict:
    t0 = time.perf_counter()
    import torch
    import torch.nn.functional as F
    if device == "cuda":
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    from bench_chunk import fla_function, make_inputs
    fn = fla_function(name)
    t2 = time.perf_counter()
    a, kw, _ = make_inputs(name, *shape, torch, F, dev=device)
    if device == "cuda":
        torch.cuda.synchronize()
    t_inputs = time.perf_counter()
    marks = []

    def call():
        o = fn(**a, **kw)[0]
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        o.backward(torch.randn_like(o))
        if device == "cuda":
            torch.cuda.synchronize()
    if profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.runcall(call)
    else:
        call()
    t3 = time.perf_counter()
    row = dict(start_s=round(t1 - t0, 2), import_s=round(t2 - t1, 2), first_call_s=round(t3 - t2, 2),
               inputs_s=round(t_inputs - t2, 2), forward_s=round(marks[0] - t_inputs, 2),
               backward_s=round(t3 - marks[0], 2))
    if profile:  # where the call's host time went: the functions with the most cumulative time
        stats = pstats.Stats(profiler).stats
        top = sorted(stats.items(), key=lambda item: -item[1][3])[:profile]
        row["profile"] = [[round(cum, 3), f"{os.path.relpath(file) if file.startswith('/') else file}:{line}({fname})"]
                          for (file, line, fname), (_, _, _, cum, _) in top]
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS))
    p.add_argument("--shape", default="2,2048,16,128", help="B,T,H,D")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--profile", type=int, default=0,
                   help="with N > 0: the N functions with the most cumulative time in each call (cProfile)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    shape = tuple(int(x) for x in args.shape.split(","))
    if args.child:
        print(json.dumps(child(args.child, shape, args.device, args.profile)))
        return
    rows = []
    for name in args.ops.split(","):
        row = dict(op=name, shape="B{}_T{}_H{}_D{}".format(*shape))
        with tempfile.TemporaryDirectory() as triton_cache, tempfile.TemporaryDirectory() as flagen_cache:
            env = dict(os.environ, TRITON_CACHE_DIR=triton_cache, FLAGEN_CACHE_DIR=flagen_cache)
            if args.device == "cpu":
                env["TRITON_INTERPRET"] = "1"
            for run in ("cold", "warm"):
                out = subprocess.run([sys.executable, __file__, "--child", name, "--shape", args.shape,
                                      "--device", args.device, "--profile", str(args.profile)],
                                     env=env, capture_output=True, text=True)
                if out.returncode:
                    row[run] = dict(error=out.stderr.strip().splitlines()[-1][:300] if out.stderr else "failed")
                else:
                    row[run] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        import torch
        import triton
        env = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", torch=torch.__version__,
                   triton=triton.__version__)
        with open(args.out, "w") as f:
            json.dump(dict(env=env, results=rows), f, indent=1)


if __name__ == "__main__":
    main()
