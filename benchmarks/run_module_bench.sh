#!/usr/bin/env bash
# The fla.modules benchmark on the GPU (device tool): ours, FLA 0.6.0 (from the wheels in .whl/,
# unpacked to a temp dir and imported in its own process) and the eager PyTorch formulas.
#   bash benchmarks/run_module_bench.sh [--cases RMSNorm,...]
# Writes JSON and modules.md to $OUT (or ./bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-bench-out}"); mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLAGEN_CACHE_DIR=${FLAGEN_CACHE_DIR:-$(mktemp -d)}
python3 benchmarks/bench_modules.py --impl flagen --out "$out/modules_flagen.json" "$@" | tee "$out/modules_flagen.log"
python3 benchmarks/bench_modules.py --impl eager --out "$out/modules_eager.json" "$@" > "$out/modules_eager.log"
fla_dir=$(mktemp -d)
for w in .whl/fla_core-0.6.0-*.whl .whl/flash_linear_attention-0.6.0-*.whl; do
  python3 -m zipfile -e "$w" "$fla_dir"
done
# upstream's package must not see ours: run from its own directory, PYTHONPATH cleared
(cd "$fla_dir" && PYTHONPATH= python3 "$OLDPWD/benchmarks/bench_modules.py" --impl fla --fla-path "$fla_dir" \
    --out "$out/modules_fla.json" "$@" > "$out/modules_fla.log")
python3 benchmarks/compare_modules.py "$out/modules_flagen.json" "$out/modules_fla.json" "$out/modules_eager.json" \
  | tee "$out/modules.md"
