"""Merge the JSON of benchmarks/bench_chunk.py runs into one Markdown table.

    python benchmarks/compare_chunk.py flagen.json fla.json sdpa.json > results.md

Ratios are FLA time / our time: above 1 we are faster.
"""

from __future__ import annotations

import json
import sys


def main(ours_path, fla_path, sdpa_path):
    ours, fla, sdpa = (json.load(open(p)) for p in (ours_path, fla_path, sdpa_path))
    key = lambda r: (r.get("op"), r.get("shape"))  # noqa: E731
    theirs = {key(r): r for r in fla["results"]}
    attn = {r["shape"]: r for r in sdpa["results"]}
    print(f"Device: {ours['env']['device']}; torch {ours['env']['torch']}, Triton {ours['env']['triton']}; "
          f"bf16; times in ms (median, triton.testing.do_bench).")
    print(f"Ours: this repository's `fla` ({ours['env']['fla_file']}). "
          f"FLA: flash-linear-attention {fla['env'].get('fla_version')} ({fla['env']['fla_file']}), "
          f"separate process. ratio = FLA / ours (> 1: ours faster).\n")
    print("| op | shape B_T_H_D | ours fwd | FLA fwd | ratio | ours fwd+bwd | FLA fwd+bwd | ratio "
          "| SDPA fwd | SDPA fwd+bwd | ours first call (s) | FLA first call (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def fmt(x):
        return "—" if x is None else f"{x:.3f}"

    for r in ours["results"]:
        if "shape" not in r:
            continue
        t = theirs.get(key(r), {})
        a = attn.get(r["shape"], {})
        fb_theirs = t.get("fwd_bwd_ms")
        fb_note = fmt(fb_theirs) if fb_theirs is not None else ("refused" if "fwd_bwd_error" in t else "—")
        ratio_f = f"{t['fwd_ms'] / r['fwd_ms']:.2f}" if t.get("fwd_ms") and r.get("fwd_ms") else "—"
        ratio_b = f"{fb_theirs / r['fwd_bwd_ms']:.2f}" if fb_theirs and r.get("fwd_bwd_ms") else "—"
        print(f"| {r['op']} | {r['shape'][1:].replace('_T', '_').replace('_H', '_').replace('_D', '_')} "
              f"| {fmt(r.get('fwd_ms'))} | {fmt(t.get('fwd_ms'))} | {ratio_f} "
              f"| {fmt(r.get('fwd_bwd_ms'))} | {fb_note} | {ratio_b} | {fmt(a.get('fwd_ms'))} "
              f"| {fmt(a.get('fwd_bwd_ms'))} | {r.get('first_call_s', '—')} | {t.get('first_call_s', '—')} |")
    notes = [f"- FLA {r['op']} {r['shape']}: {r['fwd_bwd_error']}" for r in fla["results"] if "fwd_bwd_error" in r]
    notes += [f"- {src} {r.get('op')} {r.get('shape', '')}: {r['error']}" for src, d in (("ours", ours), ("FLA", fla))
              for r in d["results"] if "error" in r]
    if notes:
        print("\nNotes:\n" + "\n".join(notes))


if __name__ == "__main__":
    main(*sys.argv[1:4])
