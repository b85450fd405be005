"""Time fla.modules (forward, forward+backward, peak memory) for one implementation, in a
process of its own (GPU).

    python benchmarks/bench_modules.py --impl flagen --out flagen.json    # this repository's fla
    python benchmarks/bench_modules.py --impl fla --fla-path DIR --out fla.json   # FLA 0.6.0 unpacked at DIR
    python benchmarks/bench_modules.py --impl eager --out eager.json      # plain PyTorch formulas
    python benchmarks/compare_modules.py flagen.json fla.json eager.json

``flagen`` and ``fla`` construct the same ``fla.modules`` classes with the same arguments (both
packages are named ``fla``, hence one process each); ``eager`` runs the formulas the CPU tests
check them against. bf16 inputs, CUDA events through ``triton.testing.do_bench`` (median);
``peak_mb`` is the peak memory of one forward+backward above what the inputs hold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench_chunk import device_ms  # (this directory: no package import, so FLA's process finds it too)

# name: (constructor arguments, input shapes) at sizes of a ~1B-parameter model's layer
CASES = {
    "RMSNorm": (dict(hidden_size=2048), dict(x=(8, 2048, 2048))),
    "LayerNorm": (dict(hidden_size=2048, bias=True), dict(x=(8, 2048, 2048))),
    "FusedRMSNormGated": (dict(hidden_size=128), dict(x=(8 * 2048, 16, 128), g=(8 * 2048, 16, 128))),
    "ShortConvolution": (dict(hidden_size=4096, kernel_size=4), dict(x=(8, 2048, 4096))),
    "GatedMLP": (dict(hidden_size=2048), dict(x=(4, 2048, 2048))),
    "RotaryEmbedding": (dict(dim=128), dict(q=(8, 2048, 16, 128), k=(8, 2048, 16, 128))),
    "FusedCrossEntropyLoss": (dict(), dict(input=(8192, 32000), target=(8192,))),
    # 16k tokens, a 150k vocabulary: the logits alone would be 4.9 GB in bf16
    "FusedLinearCrossEntropyLoss": (dict(), dict(x=(16384, 2048), target=(16384,), weight=(151936, 2048))),
}


def eager_module(name, kw, torch, F):
    """The plain-PyTorch formula of module ``name`` (what tests/test_modules.py checks against)."""
    if name in ("RMSNorm", "LayerNorm"):
        D = kw["hidden_size"]
        w = torch.nn.Parameter(torch.ones(D, device="cuda"))
        b = torch.nn.Parameter(torch.zeros(D, device="cuda")) if kw.get("bias") else None
        if name == "LayerNorm":
            return lambda x: F.layer_norm(x.float(), (D,), w, b, 1e-5).to(x.dtype)
        return lambda x: (F.rms_norm(x.float(), (D,), w, 1e-5)).to(x.dtype)
    if name == "FusedRMSNormGated":
        w = torch.nn.Parameter(torch.ones(kw["hidden_size"], device="cuda"))
        return lambda x, g: (F.rms_norm(x.float(), x.shape[-1:], w, 1e-5) * F.silu(g.float())).to(x.dtype)
    if name == "ShortConvolution":
        conv = torch.nn.Conv1d(kw["hidden_size"], kw["hidden_size"], kw["kernel_size"], groups=kw["hidden_size"],
                               padding=kw["kernel_size"] - 1, bias=False, device="cuda")
        return lambda x: F.silu(conv(x.transpose(1, 2).to(conv.weight.dtype))[..., :x.shape[1]]).transpose(1, 2)
    if name == "GatedMLP":
        D = kw["hidden_size"]
        inner = -(-int(D * 4 * 2 / 3) // 256) * 256
        lin = [torch.nn.Linear(a, b, bias=False, device="cuda") for a, b in ((D, inner), (D, inner), (inner, D))]
        return lambda x: F.linear(F.silu(F.linear(x, lin[0].weight.to(x.dtype))) * F.linear(x, lin[1].weight.to(
            x.dtype)), lin[2].weight.to(x.dtype))
    if name == "RotaryEmbedding":
        d = kw["dim"]
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device="cuda").float() / d))

        def rope(q, k):
            ang = torch.outer(torch.arange(q.shape[1], device="cuda").float(), inv)[None, :, None]
            c, s = ang.cos(), ang.sin()

            def rot(x):
                x1, x2 = x.float().chunk(2, -1)
                return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1).to(x.dtype)
            return rot(q), rot(k)
        return rope
    if name == "FusedCrossEntropyLoss":
        return lambda input, target: F.cross_entropy(input.float(), target)
    if name == "FusedLinearCrossEntropyLoss":
        return lambda x, target, weight: F.cross_entropy(F.linear(x, weight).float(), target)
    raise KeyError(name)


def make_inputs(shapes, torch):
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for n, s in shapes.items():
        if n == "target":
            vocab = 151936 if "weight" in shapes else 32000
            out[n] = torch.randint(0, vocab, s, device="cuda", generator=gen)
        else:
            out[n] = torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["flagen", "fla", "eager"], required=True)
    p.add_argument("--fla-path", help="directory holding upstream's unpacked `fla` package")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", default=",".join(CASES))
    args = p.parse_args()
    if args.impl == "fla":
        sys.path.insert(0, args.fla_path)
    import torch
    import torch.nn.functional as F
    import triton
    from triton.testing import do_bench

    env = dict(impl=args.impl, device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    if args.impl != "eager":
        import fla
        import fla.modules as modules
        root = args.fla_path if args.impl == "fla" else os.getcwd()
        env["fla_file"] = ("<--fla-path>/" if args.impl == "fla" else "") + os.path.relpath(fla.__file__, root)
    results = []
    for name in args.cases.split(","):
        kw, shapes = CASES[name]
        row = dict(module=name, shapes={n: list(s) for n, s in shapes.items()})
        try:
            fn = (eager_module(name, kw, torch, F) if args.impl == "eager" else
                  getattr(modules, name)(**kw).cuda())
            if args.impl != "eager" and name == "GatedMLP":
                fn = fn.to(torch.bfloat16)  # (its linear layers take the activations' dtype)
            inputs = make_inputs(shapes, torch)
            call = (lambda: fn(**inputs)) if args.impl == "eager" else (lambda: fn(*inputs.values()))

            def loss():
                out = call()
                out = out[0] if isinstance(out, tuple) and name != "RotaryEmbedding" else out
                return sum(o.float().sum() for o in out) if isinstance(out, tuple) else out.float().sum()
            leaves = [x for x in inputs.values() if x.is_floating_point()]
            with torch.no_grad():
                row["fwd_ms"] = round(do_bench(call, warmup=25, rep=200), 4)
                row["fwd_device_ms"] = device_ms(call, torch)
            row["fwd_bwd_ms"] = round(do_bench(lambda: loss().backward(), warmup=25, rep=200, grad_to_none=leaves), 4)
            row["fwd_bwd_device_ms"] = device_ms(lambda: loss().backward(), torch, grad_to_none=leaves)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss().backward()
            torch.cuda.synchronize()
            row["peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
        except Exception as e:  # noqa: BLE001 - report and go on
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(json.dumps(row), flush=True)
        results.append(row)
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(dict(env=env, results=results), f, indent=1)


if __name__ == "__main__":
    main()
