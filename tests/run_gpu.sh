#!/usr/bin/env bash
# The GPU correctness run (device tool): every recurrent and chunked op, forward and every gradient, bf16
# q/k/v with fp32 gates, against the float64 reference, compiled for the real GPU (no
# interpreter). Writes the log and a summary to $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}; mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} FLAGEN_TEST_DEVICE=cuda TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
export FLAGEN_CACHE_DIR=$(mktemp -d)
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)'
} | tee "$out/env.txt"
python3 -m pytest tests/test_recurrent_ops.py tests/test_user_variant.py tests/test_chunk_ops.py tests/test_chunk_gpu.py -q -p no:cacheprovider "$@" 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
tail -n 1 "$out/pytest.log" >> "$out/env.txt"
exit "$status"
