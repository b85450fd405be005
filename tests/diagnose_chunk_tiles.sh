#!/usr/bin/env bash
# Which tile/launch configurations Triton compiles correctly on this GPU: each argument is a
# FLAGEN_CHUNK_TILES value, run over the grid of tests/diagnose_chunk.py (chunked against
# recurrent, bf16); a crashed case (illegal address) restarts the grid past it.
#   bash tests/diagnose_chunk_tiles.sh "" "o=128,64,8;dqk=64,64,8,1"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD TRITON_INTERPRET=0 CUDA_LAUNCH_BLOCKING=1 FLAGEN_CACHE_DIR=$(mktemp -d)
for tiles in "$@"; do
  echo "== tiles='$tiles'"
  i=0
  while :; do
    out=$(FLAGEN_CHUNK_TILES="$tiles" timeout 300 python tests/diagnose_chunk.py --grid $i 2>&1)
    echo "$out" | grep -E "BAD|CRASH|Error" | head -20
    echo "$out" | grep -c "ok " 
    echo "$out" | grep -q CRASH || break
    last=$(echo "$out" | grep -o "#[0-9]* CRASH" | tr -dc 0-9)
    i=$((last + 1))
  done
done
