#!/usr/bin/env bash
# The chunked-ops benchmark on the GPU (device tool): ours, FLA 0.6.0 (from the wheels in
# .whl/, unpacked to a temp dir and imported in its own process) and torch SDPA.
#   bash benchmarks/run_chunk_bench.sh [ours|fla|sdpa|all] [--ops chunk_gla,...] [--shapes quick|suite|sweep,...]
#   bash benchmarks/run_chunk_bench.sh revisions DIR [ROUNDS [--ops chunk_gla,...]]
#       this tree against another revision's tree in DIR (e.g. `git archive REV | tar -x -C DIR`,
#       carried to the device), ROUNDS alternated runs each (default 2), plus SDPA
# Writes JSON and results.md (before_after.md) to $OUT (or ./bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-bench-out}"); mkdir -p "$out"
what=${1:-all}; shift || true
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLAGEN_CACHE_DIR=${FLAGEN_CACHE_DIR:-$(mktemp -d)}
if [[ $what == revisions ]]; then
  before=$(realpath "$1"); rounds=${2:-2}; shift $(( $# < 2 ? $# : 2 ))
  for ((i = 0; i < rounds; i++)); do
    # this tree's script (the same timing, CUDA time included) on the other revision's package
    (cd "$before" && PYTHONPATH=$before python3 "$OLDPWD/benchmarks/bench_chunk.py" --impl flagen \
      --out "$out/before$i.json" "$@") > "$out/before$i.log"
    python3 benchmarks/bench_chunk.py --impl flagen --out "$out/after$i.json" "$@" > "$out/after$i.log"
  done
  python3 benchmarks/bench_chunk.py --impl sdpa --out "$out/sdpa.json" "$@"
  python3 benchmarks/compare_revisions.py --before "$out"/before*.json --after "$out"/after*.json \
    --sdpa "$out/sdpa.json" | tee "$out/before_after.md"
  exit
fi
if [[ $what == ours || $what == all ]]; then
  python3 benchmarks/bench_chunk.py --impl flagen --ceilings --out "$out/flagen.json" "$@" | tee "$out/flagen.log"
fi
if [[ $what == sdpa || $what == all ]]; then
  python3 benchmarks/bench_chunk.py --impl sdpa --out "$out/sdpa.json" "$@"
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
  python3 benchmarks/compare_chunk.py "$out/flagen.json" "$out/fla.json" "$out/sdpa.json" --plot "$out/time_vs_T.png" \
    | tee "$out/results.md"
fi
