"""Launch options of the modules' Triton kernels (row_norm.py, causal_conv.py) on the GPU: each
candidate checked against the PyTorch path (outputs and input gradients, max error relative to
the largest magnitude) and timed forward and forward+backward (wall time and the kernels' CUDA
time), at bench_modules.py's shapes.

    python benchmarks/tune_modules.py [--out tune.json]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from triton.testing import do_bench

import fla.modules as modules
import fla.modules.causal_conv as causal_conv
import fla.modules.convolution
import fla.modules.fused_norm_gate
import fla.modules.layernorm
import fla.modules.row_norm as row_norm
from benchmarks.bench_chunk import device_ms

NORM_CANDIDATES = list(itertools.product((2048, 4096, 8192), (256, 512, 1024)))  # row_norm.LAUNCH entries
CONV_CANDIDATES = [(bt, bd, w) for bt, bd in ((64, 128), (32, 128), (128, 64), (64, 64), (32, 256)) for w in (4, 8)]


def cases():
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*s):
        return torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    return {
        "RMSNorm": ("norm", modules.RMSNorm(2048).cuda(), [rand(8, 2048, 2048)]),
        "LayerNorm": ("norm", modules.LayerNorm(2048, bias=True).cuda(), [rand(8, 2048, 2048)]),
        "FusedRMSNormGated": ("norm", modules.FusedRMSNormGated(128).cuda(), [rand(16384, 16, 128),
                                                                             rand(16384, 16, 128)]),
        "ShortConvolution": ("conv", modules.ShortConvolution(4096, 4).cuda(), [rand(8, 2048, 4096)]),
    }


def run(mod, inputs):
    """The output and the input gradients of a fixed random projection of it (not of its sum of
    squares: a norm's is constant, its gradient rounding noise)."""
    out = mod(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    proj = torch.randn(out.shape, device=out.device, generator=torch.Generator(device=out.device).manual_seed(1))
    grads = torch.autograd.grad((out.float() * proj).sum(), inputs)
    return [out.detach().float(), *(g.float() for g in grads)]


def set_path(triton_path: bool):
    for m in (fla.modules.layernorm, fla.modules.fused_norm_gate):
        m.usable = (lambda x, groups=1: triton_path) if not triton_path else row_norm.usable
    causal_conv.usable = (lambda x, h0: False) if not triton_path else USABLE_CONV


USABLE_CONV = causal_conv.usable


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    defaults = dict(row_norm.LAUNCH), (causal_conv.BT, causal_conv.BD, causal_conv.WARPS)
    for name, (kind, mod, inputs) in cases().items():
        set_path(False)
        ref = run(mod, inputs)
        set_path(True)
        for cand in NORM_CANDIDATES if kind == "norm" else CONV_CANDIDATES:
            if kind == "norm":  # both kernels: pick the forward's by fwd, the backward's by f+b - fwd
                row_norm.LAUNCH.update(fwd=cand, bwd=cand)
            else:
                causal_conv.BT, causal_conv.BD, causal_conv.WARPS = cand
            row = dict(module=name, launch=list(cand))
            try:
                ours = run(mod, inputs)
                row["max_rel_err"] = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
                                         for a, b in zip(ours, ref))
                with torch.no_grad():
                    row["fwd_ms"] = round(do_bench(lambda: mod(*inputs), warmup=10, rep=50), 4)
                    row["fwd_device_ms"] = device_ms(lambda: mod(*inputs), torch)
                row["fwd_bwd_ms"] = round(do_bench(lambda: run(mod, inputs), warmup=10, rep=50), 4)
                row["fwd_bwd_device_ms"] = device_ms(lambda: run(mod, inputs), torch)
            except Exception as e:  # noqa: BLE001 - report and go on
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            print(json.dumps(row), flush=True)
            rows.append(row)
        row_norm.LAUNCH.update(defaults[0])
        causal_conv.BT, causal_conv.BD, causal_conv.WARPS = defaults[1]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
