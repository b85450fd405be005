#!/usr/bin/env bash
# The GPU correctness run (device tool): every recurrent and chunked op, forward and every gradient, bf16
# q/k/v with fp32 gates, against the float64 reference, compiled for the real GPU (no
# interpreter). Writes the log and a summary to $OUT (or ./gpu-out).
#   bash tests/run_gpu.sh [pytest args]          one pytest process
#   SHARDS=6 bash tests/run_gpu.sh [pytest args] the tests dealt round-robin to 6 processes at once
#                                                (compilation is most of the time: it runs in parallel)
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-gpu-out}"); mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} FLAGEN_TEST_DEVICE=cuda TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
export FLAGEN_CACHE_DIR=$(mktemp -d)
# (tests/test_bad_input.py is written for the interpreter: fp32 bounds, CPU-made tensors)
files=(tests/test_recurrent_ops.py tests/test_user_variant.py tests/test_chunk_ops.py tests/test_chunk_gpu.py
       tests/test_op_arguments.py tests/test_layers.py tests/test_modules.py tests/test_models.py tests/test_compile.py tests/test_packing.py)
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)'
} | tee "$out/env.txt"
shards=${SHARDS:-1}
if (( shards <= 1 )); then
  python3 -m pytest "${files[@]}" -q -p no:cacheprovider "$@" 2>&1 | tee "$out/pytest.log"
  status=${PIPESTATUS[0]}
  tail -n 1 "$out/pytest.log" >> "$out/env.txt"
  exit "$status"
fi
python3 -m pytest "${files[@]}" --collect-only -q -p no:cacheprovider "$@" | grep '::' > "$out/tests.txt"
echo "$(wc -l < "$out/tests.txt") tests in $shards shards" | tee -a "$out/env.txt"
pids=()
for ((i = 0; i < shards; i++)); do
  mapfile -t ids < <(awk -v n="$shards" -v i="$i" '(NR - 1) % n == i' "$out/tests.txt")
  python3 -m pytest "${ids[@]}" -q -p no:cacheprovider > "$out/pytest$i.log" 2>&1 &
  pids+=($!)
done
status=0
for ((i = 0; i < shards; i++)); do
  wait "${pids[$i]}" || status=1
  grep -E "^(FAILED|ERROR)" "$out/pytest$i.log"
  echo "shard $i: $(tail -n 1 "$out/pytest$i.log")" | tee -a "$out/env.txt"
done
# one log back (the device tool returns few files)
for ((i = 0; i < shards; i++)); do echo "=== shard $i"; cat "$out/pytest$i.log"; done > "$out/pytest.log"
rm -f "$out"/pytest[0-9]*.log
exit "$status"
