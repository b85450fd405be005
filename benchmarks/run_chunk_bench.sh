#!/usr/bin/env bash
# The chunked-ops benchmark on the GPU (device tool): ours, FLA 0.6.0 (from the wheels in
# .whl/, unpacked to a temp dir and imported in its own process) and torch SDPA.
#   bash benchmarks/run_chunk_bench.sh [ours|fla|sdpa|all] [--ops chunk_gla,...]
# Writes JSON and results.md to $OUT (or ./bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-bench-out}"); mkdir -p "$out"
what=${1:-all}; shift || true
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLAGEN_CACHE_DIR=${FLAGEN_CACHE_DIR:-$(mktemp -d)}
if [[ $what == ours || $what == all ]]; then
  python3 benchmarks/bench_chunk.py --impl flagen --out "$out/flagen.json" "$@" | tee "$out/flagen.log"
fi
if [[ $what == sdpa || $what == all ]]; then
  python3 benchmarks/bench_chunk.py --impl sdpa --out "$out/sdpa.json"
fi
if [[ $what == fla || $what == all ]]; then
  fla_dir=$(mktemp -d)
  for w in .whl/fla_core-0.6.0-*.whl .whl/flash_linear_attention-0.6.0-*.whl; do
    python3 -m zipfile -e "$w" "$fla_dir"
  done
  # upstream's package must not see ours: run from its own directory, PYTHONPATH cleared
  (cd "$fla_dir" && PYTHONPATH= python3 "$OLDPWD/benchmarks/bench_chunk.py" --impl fla --fla-path "$fla_dir" \
      --out "$out/fla.json" "$@" | tee "$out/fla.log")
fi
if [[ -f $out/flagen.json && -f $out/fla.json && -f $out/sdpa.json ]]; then
  python3 benchmarks/compare_chunk.py "$out/flagen.json" "$out/fla.json" "$out/sdpa.json" | tee "$out/results.md"
fi
