"""Time the chunked ops of one implementation, in a process of its own.

    python benchmarks/bench_chunk.py --impl flagen --out flagen.json
    python benchmarks/bench_chunk.py --impl fla --fla-path DIR --out fla.json
    python benchmarks/bench_chunk.py --impl sdpa --out sdpa.json

``flagen`` and ``fla`` run the same calls (``fla.ops.<family>.chunk_<family>``): ours is this
repository's ``fla``, upstream is flash-linear-attention 0.6.0 unpacked at ``--fla-path``
(both packages are named ``fla``, hence one process each). bf16 inputs, CUDA events through
``triton.testing.do_bench`` (median of repeats). ``first_call_s`` is the wall time of the
first forward+backward in the process: compilation (and upstream's autotuning) included.
benchmarks/run_chunk_bench.sh runs all three and writes the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# B, T, H, D. "suite": FLA's benchmark shapes; "sweep": T from 1K to 16K at 32K tokens a batch
# (benchmarks/compare_chunk.py --plot draws time against T from it)
SHAPE_SETS = {
    "quick": [(4, 2048, 16, 128), (2, 16384, 16, 128)],
    "suite": [(1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (4, 4096, 64, 128), (8, 2048, 32, 256),
              (8, 1024, 8, 64)],
    "sweep": [(32768 // T, T, 16, 128) for T in (1024, 2048, 4096, 8192, 16384)],
}


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """A set's name ("quick", "suite", "sweep") or shapes "BxTxHxD,...", in the order given."""
    shapes = []
    for part in text.split(","):
        if part in SHAPE_SETS:
            shapes += [s for s in SHAPE_SETS[part] if s not in shapes]
        else:
            dims = tuple(int(x) for x in part.split("x"))
            if len(dims) != 4:
                raise ValueError(f"a shape is BxTxHxD or one of {sorted(SHAPE_SETS)}, got {part!r}")
            shapes.append(dims)
    return shapes
# "+normalize": chunk_linear_attn with normalize=True, on positive (elu + 1) q and k
# The delta rules as their layers call them: L2-normalised q, k in the kernel, a sigmoid-ed beta;
# "+gate": Gated DeltaNet's / KDA's gate in the kernel (A_log, dt_bias), as Qwen3-Next and Kimi
# Linear use it.
OPS = ["chunk_retention", "chunk_simple_gla", "chunk_gla", "chunk_linear_attn", "chunk_linear_attn+normalize",
       "chunk_lightning_attn", "chunk_rwkv6", "chunk_delta_rule", "chunk_gated_delta_rule",
       "chunk_gated_delta_rule+gate", "chunk_kda", "chunk_kda+gate", "chunk_rwkv7"]


def fla_function(name):
    """The fla.ops function that op ``name`` of OPS calls (from whichever `fla` is imported)."""
    import importlib
    function = name.split("+")[0]
    return getattr(importlib.import_module(f"fla.ops.{function[len('chunk_'):]}"), function)


def make_inputs(name, B, T, H, D, torch, F, dev="cuda"):
    """(kwargs of op ``name``, its keyword options, the leaves to clear gradients of): bf16 on
    the GPU, fp32 on the CPU (the interpreter)."""
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, device=dev, dtype=dt, generator=gen)

    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    if name == "chunk_linear_attn+normalize":
        q, k = F.elu(q) + 1, F.elu(k) + 1
    grads = [q, k, v]
    kw = {}
    if name == "chunk_simple_gla":
        kw["g"] = F.logsigmoid(torch.randn(B, T, H, device=dev, generator=gen)) / 16
        grads.append(kw["g"])
    elif name == "chunk_gla":
        kw["g"] = (F.logsigmoid(torch.randn(B, T, H, D, device=dev, generator=gen)) / 16).to(dt)
        grads.append(kw["g"])
    elif name == "chunk_rwkv6":
        kw["w"] = (F.logsigmoid(torch.randn(B, T, H, D, device=dev, generator=gen)) / 16).to(dt)
        kw["u"] = torch.randn(H, D, device=dev, generator=gen).to(dt)
        grads += [kw["w"], kw["u"]]
    elif name.startswith("chunk_linear_attn"):
        kw["normalize"] = name.endswith("+normalize")
    elif name == "chunk_lightning_attn":
        kw.update(layer_idx=0, num_layers=4)
    elif "delta_rule" in name or name.startswith("chunk_kda"):
        kw.update(beta=torch.rand(B, T, H, device=dev, generator=gen).to(dt), use_qk_l2norm_in_kernel=True)
        grads.append(kw["beta"])
        if name != "chunk_delta_rule":
            gate_shape = (B, T, H, D) if name.startswith("chunk_kda") else (B, T, H)
            if name.endswith("+gate"):
                kw["g"] = torch.randn(*gate_shape, device=dev, generator=gen).to(dt)
                kw.update(use_gate_in_kernel=True, A_log=torch.log(torch.rand(H, device=dev, generator=gen) * 15 + 1),
                          dt_bias=torch.randn(H * D if name.startswith("chunk_kda") else H, device=dev,
                                              generator=gen))
            else:
                kw["g"] = (F.logsigmoid(torch.randn(*gate_shape, device=dev, generator=gen)) / 16).to(dt)
            grads.append(kw["g"])
    elif name == "chunk_rwkv7":  # as RWKV7Attention calls it: a = -kk, b = kk * a_rate
        kk = F.normalize(torch.randn(B, T, H, D, device=dev, generator=gen), dim=-1)
        kw["w"] = (F.logsigmoid(torch.randn(B, T, H, D, device=dev, generator=gen)) / 16).to(dt)
        kw["a"], kw["b"] = (-kk).to(dt), (kk * torch.rand(B, T, H, 1, device=dev, generator=gen)).to(dt)
        grads += [kw["w"], kw["a"], kw["b"]]
    for x in grads:
        x.requires_grad_(True)
    args = dict(r=q, k=k, v=v) if name in ("chunk_rwkv6", "chunk_rwkv7") else dict(q=q, k=k, v=v)
    return args, kw, grads


def device_ms(fn, torch, reps=20, grad_to_none=()):
    """The CUDA time of one call of ``fn`` (its kernels' time summed, torch.profiler): what the
    GPU spends, whatever the host adds (at small shapes the host decides the wall time)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            for x in grad_to_none:
                x.grad = None
            fn()
        torch.cuda.synchronize()
    return round(sum(e.self_device_time_total for e in prof.key_averages()) / reps / 1000, 4)


def bench_fla(args, torch, F, bench, save):
    """Time each op and shape; ``save(results)`` after every row, so that a run stopped at its
    time limit keeps what it measured."""
    results = []
    for name in args.ops.split(","):
        try:
            fn = fla_function(name)
        except Exception as e:  # noqa: BLE001 - report what is missing and go on
            results.append(dict(op=name, error=f"import: {e!r}"))
            continue
        for B, T, H, D in args.shapes:
            row = dict(op=name, shape=f"B{B}_T{T}_H{H}_D{D}")
            try:
                a, kw, grads = make_inputs(name, B, T, H, D, torch, F)
                do = torch.randn_like(a["v"])

                def fwd():
                    return fn(**a, **kw)[0]

                def fwd_bwd():
                    fn(**a, **kw)[0].backward(do)

                t0 = time.perf_counter()
                try:
                    fwd_bwd()
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.perf_counter() - t0, 2)
                    row["fwd_bwd_ms"] = bench(fwd_bwd, grad_to_none=grads)
                    row["fwd_bwd_cuda_ms"] = device_ms(fwd_bwd, torch, grad_to_none=grads)
                except Exception as e:  # noqa: BLE001 - upstream refuses some backwards on Hopper
                    row["fwd_bwd_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                with torch.no_grad():
                    row["fwd_ms"] = bench(fwd)
                    row["fwd_cuda_ms"] = device_ms(fwd, torch)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(json.dumps(row), flush=True)
            results.append(row)
            save(results)
            torch.cuda.empty_cache()
    return results


def bench_sdpa(torch, F, bench, shapes):
    results = []
    for B, T, H, D in shapes:
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        do = torch.randn_like(q)

        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwd_bwd():
            fwd().backward(do)

        row = dict(op="sdpa_causal", shape=f"B{B}_T{T}_H{H}_D{D}")
        with torch.no_grad():
            row["fwd_ms"] = bench(fwd)
        row["fwd_bwd_ms"] = bench(fwd_bwd, grad_to_none=[q, k, v])
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["flagen", "fla", "sdpa"], required=True)
    p.add_argument("--fla-path", help="directory holding upstream's unpacked `fla` package")
    p.add_argument("--out", required=True)
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--shapes", default="quick", type=parse_shapes,
                   help=f"{', '.join(SHAPE_SETS)} or BxTxHxD,... (default quick)")
    p.add_argument("--ceilings", action="store_true",
                   help="measure the GPU's bf16 matmul and copy ceilings first (benchmarks/roofline.py)")
    args = p.parse_args()
    if args.impl == "fla":
        sys.path.insert(0, args.fla_path)
    import torch
    import torch.nn.functional as F
    import triton
    from triton.testing import do_bench

    def bench(fn, grad_to_none=None):
        return round(do_bench(fn, warmup=50, rep=300, grad_to_none=grad_to_none), 4)

    env = dict(impl=args.impl, device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=triton.__version__)

    if args.ceilings:
        from roofline import measure_ceilings  # (this script's folder is on sys.path)
        env["ceilings"] = measure_ceilings(torch, bench)

    def save(results):
        with open(args.out, "w") as f:
            json.dump(dict(env=env, results=results), f, indent=1)

    if args.impl != "sdpa":
        import fla
        # where the package came from, without this machine's paths
        root = args.fla_path if args.impl == "fla" else os.getcwd()
        env["fla_file"] = ("<--fla-path>/" if args.impl == "fla" else "") + os.path.relpath(fla.__file__, root)
        env["fla_version"] = getattr(fla, "__version__", "?")
        results = bench_fla(args, torch, F, bench, save)
    else:
        results = bench_sdpa(torch, F, bench, args.shapes)
    save(results)


if __name__ == "__main__":
    main()
