"""Where the chunked delta rule's forward spends its time, by ablation (GPU).

    python benchmarks/ablate_delta.py [--variant gated_delta_rule_l2norm] [--shape 2,16384,16,128]
                                      [--ablations baseline,no_inverse,...] [--out ablate.json]

Each ablation is the built-in's generated module with one piece of a kernel taken out or
changed (a text substitution on its source, which must apply exactly as often as stated),
imported as a module of its own; its op's forward is profiled (torch.profiler, the CUDA time of
each kernel per call). The results are wrong on purpose: only the times mean something. What a
piece costs is the baseline's time minus the ablation's. An ablation whose piece the variant's
kernels do not have (fp64 gate sums on the per-key path, block pairs on the scalar one) is
reported as skipped.

With ``--smoke`` the substitutions are applied and each ablation runs once at a tiny shape
(on the CPU through Triton's interpreter): the harness's own test.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from flagen.codegen.build import generated_dir, import_path
from flagen.runtime import chunked, chunked_delta, tuning
from flagen.runtime.op import RecurrentOp

# name: dict(kernel=the kernel whose source changes (None: the whole module), subs=[(old, new,
# count)] ("re:" before old: a regular expression; count None: any), dot=a precision for every
# product, tiles={chunked.TILES entry: launch options})
SPLIT_DOT = ('    b_c = tl.dot(a_lo, b_hi, input_precision="tf32")\n'
             '    b_c = tl.dot(a_hi, b_lo, b_c, input_precision="tf32")\n'
             '    return tl.dot(a_hi, b_hi, b_c, input_precision="tf32")')
ABLATIONS = {
    "baseline": {},
    # the triangular inverse: T = A (what wy_inverse's merges cost)
    "no_inverse": dict(kernel="chunk_delta_wy", subs=[("b_T = wy_inverse(b_A, BT)", "b_T = b_A", 1)]),
    # the inverse's diagonal 16 x 16 blocks without their forward substitution
    "no_substitution": dict(subs=[("for i in range(1, 16):", "for i in range(1, 1):", 1)]),
    # (these two change every "tf32x3" product; in a bf16 forward only the inverse's merges are such)
    # the inverse's merges in one tf32 product each, not three
    "merges_tf32": dict(subs=[(SPLIT_DOT, '    return tl.dot(a_hi, b_hi, input_precision="tf32")', 1)]),
    # the inverse's merges through Triton's own tf32x3 (each operand split again per product)
    "builtin_tf32x3": dict(subs=[(SPLIT_DOT, '    return tl.dot(a_hi + a_lo, b_hi + b_lo, input_precision="tf32x3")', 1)]),
    # the scalar path's cumulative gate sums in fp32, not fp64 (its [BT, BT] pair decays too)
    "fp32_gate_sums": dict(subs=[(".to(tl.float64)", "", None)]),
    # no P written by the WY kernel (its [BT, BT] row per token; the forward writes no Tm)
    "no_pair_stores": dict(kernel="chunk_delta_wy",
                           subs=[("    tl.store(P + t0_p + o_pair, b_P.to(P.dtype.element_ty), mask=m_t[:, None])\n",
                                  "", 1)]),
    # no w or u written (their products then vanish with them)
    "no_w_u": dict(kernel="chunk_delta_wy", subs=[(r"re:\n        tl\.store\(w \+ [^\n]*", "", 1),
                                                   (r"re:\n        tl\.store\(u \+ [^\n]*", "", 1)]),
    # the state walk without writing each chunk's state
    "no_state_stores": dict(kernel="chunk_delta_fwd_h", subs=[(r"re:\n        tl\.store\(h \+ [^\n]*", "", 1)]),
    # the per-key path (KDA): the pairs within 16-token blocks, taken column by column
    "no_block_pairs": dict(kernel="chunk_delta_wy", subs=[("for j in range(0, 16):", "for j in range(0, 0):", 1)]),
    # the per-key path: the pairs across blocks, products of factors through each block's boundary
    "no_cross_block_pairs": dict(kernel="chunk_delta_wy", subs=[("for i_b in range(1, BT // 16):",
                                                                 "for i_b in range(1, 1):", 1)]),
    # the "bf16x3" products (bf16 inputs' factors and state walk) as three explicit bf16 products of
    # operands split once, as the "tf32x3" ones are (results right: only the speed is in question)
    "split_bf16x3": dict(subs=[(
        "        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=DOT)",
        "        if DOT == \"bf16x3\":\n"
        "            a_hi, b_hi = a.to(tl.bfloat16), b.to(tl.bfloat16)\n"
        "            a_lo = (a.to(tl.float32) - a_hi.to(tl.float32)).to(tl.bfloat16)\n"
        "            b_lo = (b.to(tl.float32) - b_hi.to(tl.float32)).to(tl.bfloat16)\n"
        "            c = tl.dot(a_hi, b_hi, tl.dot(a_hi, b_lo, tl.dot(a_lo, b_hi)))\n"
        "        else:\n"
        "            c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=DOT)", 1)]),
    # every product one bf16 product (chunked_delta's precision table overridden)
    "dot_bf16": dict(dot="bf16"),
    # the WY kernel's launch options (BK, BV, warps, stages; default (64, 64, 4, 3))
    "wy_8_warps": dict(tiles={"delta_wy": (64, 64, 8, 1)}),
    "wy_bk32_8_warps": dict(tiles={"delta_wy": (32, 64, 8, 1)}),
}


def force_precision(dot: str) -> None:
    """Every product of the delta-rule kernels at precision ``dot`` (chunked_delta's tables
    overridden in this process: an experiment, its results unchecked)."""
    chunked_delta.KEY_PATH_PRECISION = dot
    for roles in chunked_delta.DOT_PRECISION.values():
        roles.update(dict.fromkeys(roles, dot))


def _substitute(text: str, old: str, new: str, count: int | None) -> str:
    if old.startswith("re:"):
        out, n = re.subn(old[3:], new, text)
    else:
        n, out = text.count(old), text.replace(old, new)
    if n == 0 or (count is not None and n != count):
        raise ValueError(f"substitution {old!r} applies {n} times, expected {count or 'some'}")
    return out


def ablated_module(variant: str, name: str, tmp: Path):
    """The variant's generated module with ablation ``name`` applied, imported from ``tmp``."""
    kernel, subs = ABLATIONS[name].get("kernel"), ABLATIONS[name].get("subs", [])
    text = (generated_dir() / f"{variant}.py").read_text(encoding="utf-8")
    if kernel is None:
        start, end = 0, len(text)
    else:
        start = text.index(f"def {variant}_{kernel}(")
        end = text.find("@triton.jit", start)
        end = len(text) if end < 0 else end
    body = text[start:end]
    for old, new, count in subs:
        body = _substitute(body, old, new, count)
    path = tmp / f"ablate_{variant}_{name}.py"
    path.write_text(text[:start] + body + text[end:], encoding="utf-8")
    return import_path(path, f"flagen_ablate_{variant}_{name}")


def inputs(module, B, T, H, D, device, dtype):
    """q, k, v and the module's raw inputs as the chunk benchmarks make them: log decays
    logsigmoid(N(0, 1)) / 16, betas sigmoid(N(0, 1)), other parameters N(0, 1)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*s):
        return torch.randn(*s, generator=gen, device=device)
    q, k, v = (rand(B, T, H, D).to(dtype) for _ in range(3))
    shapes = {"token": (B, T, H), "token_key": (B, T, H, D), "head": (H,), "head_key": (H, D)}
    raw = {}
    for name, kind in module.INPUTS:
        x = rand(*shapes[kind])
        raw[name] = F.logsigmoid(x) / 16 if name == "g" else torch.sigmoid(x) if name == "beta" else x
    return q, k, v, raw


def kernel_times(fn, reps=10):
    """CUDA ms per call of each kernel ``fn`` launches (torch.profiler)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return {e.key: round(e.device_time_total / reps / 1000, 4) for e in prof.key_averages()
            if e.device_time_total > 0}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="gated_delta_rule_l2norm", help="a built-in with the delta rule, e.g. kda_l2norm")
    p.add_argument("--shape", default="2,16384,16,128")
    p.add_argument("--ablations", default=",".join(ABLATIONS))
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny shape, once each, on the CPU: the harness's test")
    args = p.parse_args()
    B, T, H, D = (1, 37, 2, 16) if args.smoke else (int(x) for x in args.shape.split(","))
    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    rows = []
    if not args.smoke:  # the GPU's table first, so that every ablation runs on it, the baseline too
        tuning.ensure(torch.device("cuda"))
    saved = ({d: dict(roles) for d, roles in chunked_delta.DOT_PRECISION.items()}, chunked_delta.KEY_PATH_PRECISION,
             dict(chunked.TILES))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.ablations.split(","):
            try:
                op = RecurrentOp(ablated_module(args.variant, name, Path(tmp)))
            except ValueError as e:  # a piece this variant's kernels do not have
                print(json.dumps(dict(ablation=name, skipped=str(e))), flush=True)
                continue
            q, k, v, raw = inputs(op.module, B, T, H, D, device, dtype)
            dot = ABLATIONS[name].get("dot")
            chunked.TILES.update(ABLATIONS[name].get("tiles", {}))
            if dot:
                force_precision(dot)

            def fwd():
                with torch.no_grad():
                    return op.chunk(q, k, v, **raw)
            try:
                if args.smoke:
                    fwd()
                    row = dict(ablation=name, ran=True)
                else:
                    times = kernel_times(fwd)
                    row = dict(ablation=name, total_ms=round(sum(times.values()), 4),
                               kernels={key.replace(f"{args.variant}_", ""): t for key, t in times.items()})
            finally:
                chunked_delta.DOT_PRECISION.update({d: dict(r) for d, r in saved[0].items()})
                chunked_delta.KEY_PATH_PRECISION = saved[1]
                chunked.TILES.clear()
                chunked.TILES.update(saved[2])
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(variant=args.variant, shape=[B, T, H, D], rows=rows), indent=1))


if __name__ == "__main__":
    main()
