"""Merge the JSON of benchmarks/bench_chunk.py runs into one Markdown table (and a plot).

    python benchmarks/compare_chunk.py flagen.json fla.json sdpa.json [--plot time_vs_T.png] > results.md

Ratios are FLA time / our time: above 1 we are faster. With the ceilings ours measured
(bench_chunk.py --ceilings), each of our times also gets its TFLOP/s and its floor's share
(floor / time: 1 is the floor; benchmarks/roofline.py has the conventions). ``--plot`` draws
time against T for the shapes that differ only in B and T (the "sweep" set), one panel per op
and pass (needs matplotlib; said and skipped without it).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from roofline import flops, floor_ms, parse_shape


def _fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def table(ours: dict, fla: dict, sdpa: dict) -> list[str]:
    key = lambda r: (r.get("op"), r.get("shape"))  # noqa: E731
    theirs = {key(r): r for r in fla["results"]}
    attn = {r["shape"]: r for r in sdpa["results"]}
    ceilings = ours["env"].get("ceilings")
    lines = [f"Device: {ours['env']['device']}; torch {ours['env']['torch']}, Triton {ours['env']['triton']}; "
             f"bf16; times in ms (median, triton.testing.do_bench).",
             f"Ours: this repository's `fla` ({ours['env']['fla_file']}). "
             f"FLA: flash-linear-attention {fla['env'].get('fla_version')} ({fla['env']['fla_file']}), "
             f"separate process. ratio = FLA / ours (> 1: ours faster)."]
    if ceilings:
        lines.append(f"Ceilings measured in our run: {ceilings['tflops']} TFLOP/s (bf16 matmul), {ceilings['gbps']} "
                     "GB/s (copy); TFLOP/s and floor share of our times by benchmarks/roofline.py's conventions.")
    lines += ["", "| op | shape B_T_H_D | ours fwd | FLA fwd | ratio | ours fwd+bwd | FLA fwd+bwd | ratio "
              "| SDPA fwd | SDPA fwd+bwd | ours TFLOP/s fwd / f+b | ours floor share fwd / f+b "
              "| ours first call (s) | FLA first call (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ours["results"]:
        if "shape" not in r:
            continue
        t = theirs.get(key(r), {})
        a = attn.get(r["shape"], {})
        fb_theirs = t.get("fwd_bwd_ms")
        fb_note = _fmt(fb_theirs) if fb_theirs is not None else ("refused" if "fwd_bwd_error" in t else "—")
        ratio_f = f"{t['fwd_ms'] / r['fwd_ms']:.2f}" if t.get("fwd_ms") and r.get("fwd_ms") else "—"
        ratio_b = f"{fb_theirs / r['fwd_bwd_ms']:.2f}" if fb_theirs and r.get("fwd_bwd_ms") else "—"
        rate, share = [], []
        for backward, ms in ((False, r.get("fwd_ms")), (True, r.get("fwd_bwd_ms"))):
            rate.append(_fmt(flops(r["op"], r["shape"], backward) / (ms * 1e9) if ms else None, 0))
            floor = floor_ms(r["op"], r["shape"], backward, ceilings)
            share.append(_fmt(floor / ms if floor and ms else None, 2))
        shape = "_".join(str(x) for x in parse_shape(r["shape"]))
        lines.append(f"| {r['op']} | {shape} | {_fmt(r.get('fwd_ms'))} | {_fmt(t.get('fwd_ms'))} | {ratio_f} "
                     f"| {_fmt(r.get('fwd_bwd_ms'))} | {fb_note} | {ratio_b} | {_fmt(a.get('fwd_ms'))} "
                     f"| {_fmt(a.get('fwd_bwd_ms'))} | {' / '.join(rate)} | {' / '.join(share)} "
                     f"| {r.get('first_call_s', '—')} | {t.get('first_call_s', '—')} |")
    notes = [f"- FLA {r['op']} {r['shape']}: {r['fwd_bwd_error']}" for r in fla["results"] if "fwd_bwd_error" in r]
    notes += [f"- {src} {r.get('op')} {r.get('shape', '')}: {r['error']}" for src, d in (("ours", ours), ("FLA", fla))
              for r in d["results"] if "error" in r]
    if notes:
        lines += ["", "Notes:", *notes]
    return lines


def sweeps(runs: dict) -> dict:
    """{(op, H, D): {impl: {pass: [(T, ms)]}}} for ops timed at two or more T with one B*T."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for impl, run in runs.items():
        for r in run["results"]:
            if "shape" not in r:
                continue
            B, T, H, D = parse_shape(r["shape"])
            for name, field in (("fwd", "fwd_ms"), ("fwd+bwd", "fwd_bwd_ms")):
                if r.get(field):
                    out[(r["op"], H, D, B * T)][impl][name].append((T, r[field]))
    return {k: v for k, v in out.items() if any(len(p) > 1 for impl in v.values() for p in impl.values())}


def plot(runs: dict, path: str) -> str:
    """Time against T (log-log), one panel per op and pass; returns what was done."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed"
    curves = sweeps(runs)
    if not curves:
        return "no plot: no op was timed at several T (run bench_chunk.py with --shapes sweep)"
    keys = sorted(curves)
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3 * len(keys)), squeeze=False)
    for row, k in zip(axes, keys):
        op, H, D, tokens = k
        for ax, name in zip(row, ("fwd", "fwd+bwd")):
            for impl, passes in sorted(curves[k].items()):
                points = sorted(passes.get(name, []))
                if points:
                    ax.plot(*zip(*points), marker="o", label=impl)
            ax.set(xscale="log", yscale="log", xlabel="T", ylabel="ms", title=f"{op} {name} (H{H} D{D}, B*T={tokens})")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"plot: {path}"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("ours")
    p.add_argument("fla")
    p.add_argument("sdpa")
    p.add_argument("--plot", help="a PNG of time against T (the sweep shapes)")
    a = p.parse_args(argv)
    ours, fla, sdpa = (json.load(open(path)) for path in (a.ours, a.fla, a.sdpa))
    print("\n".join(table(ours, fla, sdpa)))
    if a.plot:
        sdpa_rows = [dict(r, op=op) for r in sdpa["results"] for op in {x["op"] for x in ours["results"]}]
        print("\n" + plot({"ours": ours, "FLA 0.6.0": fla, "SDPA": dict(sdpa, results=sdpa_rows)}, a.plot))


if __name__ == "__main__":
    main()
