"""Merge the JSON of benchmarks/bench_modules.py runs into one Markdown table.

    python benchmarks/compare_modules.py flagen.json fla.json eager.json > modules.md

Ratios are FLA time / our time and eager time / our time: above 1 we are faster.
"""

from __future__ import annotations

import json
import sys


def main(ours_path, fla_path, eager_path):
    runs = [json.load(open(p)) for p in (ours_path, fla_path, eager_path)]
    by_name = [{r["module"]: r for r in run["results"]} for run in runs]
    env = runs[0]["env"]
    print(f"Device: {env['device']}; torch {env['torch']}, Triton {env['triton']}; bf16 inputs; times in ms "
          f"(median, triton.testing.do_bench); peak MB above the inputs for one forward+backward. FLA: "
          f"flash-linear-attention 0.6.0 in its own process; eager: the plain PyTorch formulas.\n")
    print("| module | shapes | ours fwd | FLA fwd | eager fwd | ours f+b | FLA f+b | eager f+b | FLA/ours f+b "
          "| ours MB | FLA MB | eager MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def get(row, key):
        v = row.get(key)
        return "err" if "error" in row else ("—" if v is None else f"{v:.3f}" if key.endswith("ms") else f"{v:.0f}")

    def ratio(fla, ours, key):
        return f"{fla[key] / ours[key]:.2f}" if fla.get(key) and ours.get(key) else "—"

    shapes = {name: " ".join(f"{n}{v}" for n, v in ours["shapes"].items()).replace(" ", "")
              for name, ours in by_name[0].items()}
    for name, ours in by_name[0].items():
        fla, eager = by_name[1].get(name, {}), by_name[2].get(name, {})
        print(f"| {name} | {shapes[name]} | {get(ours, 'fwd_ms')} | {get(fla, 'fwd_ms')} | {get(eager, 'fwd_ms')} "
              f"| {get(ours, 'fwd_bwd_ms')} | {get(fla, 'fwd_bwd_ms')} | {get(eager, 'fwd_bwd_ms')} "
              f"| {ratio(fla, ours, 'fwd_bwd_ms')} "
              f"| {get(ours, 'peak_mb')} | {get(fla, 'peak_mb')} | {get(eager, 'peak_mb')} |")
    if any("fwd_device_ms" in row for row in by_name[0].values()):
        print("\nGPU time alone (the kernels' CUDA time summed per call, torch.profiler; the host's share left "
              "out), ms:\n")
        print("| module | shapes | ours fwd | FLA fwd | FLA/ours fwd | ours f+b | FLA f+b | FLA/ours f+b |")
        print("|---|---|---|---|---|---|---|---|")
        for name, ours in by_name[0].items():
            fla = by_name[1].get(name, {})
            print(f"| {name} | {shapes[name]} | {get(ours, 'fwd_device_ms')} | {get(fla, 'fwd_device_ms')} "
                  f"| {ratio(fla, ours, 'fwd_device_ms')} | {get(ours, 'fwd_bwd_device_ms')} "
                  f"| {get(fla, 'fwd_bwd_device_ms')} | {ratio(fla, ours, 'fwd_bwd_device_ms')} |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
