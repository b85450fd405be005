"""Two revisions of our chunked ops side by side, from benchmarks/bench_chunk.py runs made in
one device call (each revision's `fla` in a process of its own; several runs of each may be
given, alternated to spread drift; the fastest of each revision's runs is kept).

    python benchmarks/compare_revisions.py --before b1.json b2.json --after a1.json a2.json \
        --sdpa sdpa.json > before_after.md

ratio = before / after: above 1 the new revision is faster.
"""

from __future__ import annotations

import argparse
import json


def best(paths):
    """(env, {(op, shape): row}) with the fastest fwd and fwd+bwd time of each row over runs."""
    rows, env = {}, None
    for path in paths:
        data = json.load(open(path))
        env = env or data["env"]
        for r in data["results"]:
            if "shape" not in r:
                continue
            key = (r["op"], r["shape"])
            kept = rows.setdefault(key, dict(r))
            for field in ("fwd_ms", "fwd_bwd_ms", "fwd_cuda_ms", "fwd_bwd_cuda_ms"):
                if r.get(field) is not None:
                    kept[field] = min(kept.get(field) or r[field], r[field])
    return env, rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--before", nargs="+", required=True)
    p.add_argument("--after", nargs="+", required=True)
    p.add_argument("--sdpa")
    a = p.parse_args()
    env, before = best(a.before)
    _, after = best(a.after)
    sdpa = {r["shape"]: r for r in json.load(open(a.sdpa))["results"]} if a.sdpa else {}
    print(f"Device: {env['device']}; torch {env['torch']}, Triton {env['triton']}; bf16; times in ms (fastest of "
          f"{len(a.before)} / {len(a.after)} alternated runs of the median of triton.testing.do_bench). "
          "ratio = before / after (> 1: after is faster).\n")
    print("| op | shape | before fwd | after fwd | ratio | before fwd+bwd | after fwd+bwd | ratio | SDPA fwd "
          "| SDPA fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def fmt(x):
        return "—" if x is None else f"{x:.3f}"

    def ratio(b, n):
        return f"{b / n:.2f}" if b and n else "—"

    for key, r in after.items():
        b, s = before.get(key, {}), sdpa.get(key[1], {})
        print(f"| {key[0]} | {key[1]} | {fmt(b.get('fwd_ms'))} | {fmt(r.get('fwd_ms'))} "
              f"| {ratio(b.get('fwd_ms'), r.get('fwd_ms'))} | {fmt(b.get('fwd_bwd_ms'))} | {fmt(r.get('fwd_bwd_ms'))} "
              f"| {ratio(b.get('fwd_bwd_ms'), r.get('fwd_bwd_ms'))} | {fmt(s.get('fwd_ms'))} "
              f"| {fmt(s.get('fwd_bwd_ms'))} |")
    if any(r.get("fwd_cuda_ms") for r in after.values()):
        print("\nCUDA time per call (the kernels' time summed, torch.profiler; the host's share left out, so "
              "host-bound shapes compare too):\n")
        print("| op | shape | before fwd | after fwd | ratio | before fwd+bwd | after fwd+bwd | ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for key, r in after.items():
            b = before.get(key, {})
            print(f"| {key[0]} | {key[1]} | {fmt(b.get('fwd_cuda_ms'))} | {fmt(r.get('fwd_cuda_ms'))} "
                  f"| {ratio(b.get('fwd_cuda_ms'), r.get('fwd_cuda_ms'))} | {fmt(b.get('fwd_bwd_cuda_ms'))} "
                  f"| {fmt(r.get('fwd_bwd_cuda_ms'))} | {ratio(b.get('fwd_bwd_cuda_ms'), r.get('fwd_bwd_cuda_ms'))} |")


if __name__ == "__main__":
    main()
