#!/usr/bin/env bash
# Prefill and decode tokens/s, ours against FLA 0.6.0 with the same weights (GPU, device tool):
#   bash benchmarks/run_generation_bench.sh [family ...]      (default: gla retnet)
# Ours writes a ~340M model per family, FLA 0.6.0 (wheels in .whl/, its own process) loads it.
# Writes JSON and generation.md to $OUT (or ./bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-bench-out}"); mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLAGEN_CACHE_DIR=${FLAGEN_CACHE_DIR:-$(mktemp -d)}
fla_dir=$(mktemp -d)
for w in .whl/fla_core-0.6.0-*.whl .whl/flash_linear_attention-0.6.0-*.whl; do python3 -m zipfile -e "$w" "$fla_dir"; done
families=("${@:-gla retnet}")
for family in ${families[@]}; do
  model_dir=$(mktemp -d)/$family
  python3 benchmarks/bench_generation.py --impl flagen --family "$family" --model-dir "$model_dir" \
    --out "$out/generation_${family}_flagen.json"
  # upstream's package must not see ours: run from its own directory, PYTHONPATH cleared
  (cd "$fla_dir" && PYTHONPATH= python3 "$OLDPWD/benchmarks/bench_generation.py" --impl fla --fla-path "$fla_dir" \
    --family "$family" --model-dir "$model_dir" --out "$out/generation_${family}_fla060.json")
done
python3 - "$out" <<'PY' | tee "$out/generation.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| family | params | B x prompt | ours prefill tok/s | FLA prefill tok/s | ratio | ours decode tok/s | FLA decode tok/s | ratio | same greedy tokens |")
print("|---|---|---|---|---|---|---|---|---|---|")
for ours in sorted(out.glob("generation_*_flagen.json")):
    a = json.loads(ours.read_text())
    other = ours.with_name(ours.name.replace("_flagen", "_fla060"))
    b = json.loads(other.read_text()) if other.exists() else None
    cell = lambda k: f"{b[k]:,.0f}" if b else "-"
    ratio = lambda k: f"{a[k] / b[k]:.2f}" if b else "-"
    same = (a["decoded"] == b["decoded"]) if b else "-"
    print(f"| {a['family']} | {a['parameters'] / 1e6:.0f}M | {a['batch']} x {a['prompt']} | {a['prefill_tokens_per_s']:,.0f} | "
          f"{cell('prefill_tokens_per_s')} | {ratio('prefill_tokens_per_s')} | {a['decode_tokens_per_s']:,.0f} | "
          f"{cell('decode_tokens_per_s')} | {ratio('decode_tokens_per_s')} | {same} |")
PY
