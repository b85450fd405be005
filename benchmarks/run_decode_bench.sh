#!/usr/bin/env bash
# One decoding step of Gated DeltaNet, ours and FLA 0.6.0's (wheels in .whl/, its own process),
# eager and replayed from CUDA graphs (device tool): benchmarks/bench_decode.py, both.
#   bash benchmarks/run_decode_bench.sh [--shapes BxHxD,...]
# Writes decode_flagen.json, decode_fla.json and decode.md to $OUT (or ./bench-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${OUT:-bench-out}"); mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLAGEN_CACHE_DIR=${FLAGEN_CACHE_DIR:-$(mktemp -d)}
python3 benchmarks/bench_decode.py --impl flagen --out "$out/decode_flagen.json" "$@"
fla_dir=$(mktemp -d)
for w in .whl/fla_core-0.6.0-*.whl .whl/flash_linear_attention-0.6.0-*.whl; do python3 -m zipfile -e "$w" "$fla_dir"; done
# upstream's package must not see ours: run from its own directory, PYTHONPATH cleared
(cd "$fla_dir" && PYTHONPATH= python3 "$OLDPWD/benchmarks/bench_decode.py" --impl fla --fla-path "$fla_dir" \
  --out "$out/decode_fla.json" "$@")
python3 - "$out" <<'PY' | tee "$out/decode.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
ours, fla = (json.loads((out / f"decode_{n}.json").read_text()) for n in ("flagen", "fla"))
ms = lambda x: f"{x:.4f}" if isinstance(x, float) else str(x)
print(f"{ours['env']['device']}, torch {ours['env']['torch']}, Triton {ours['env']['triton']}; ms per step")
print("| shape | FLA API: ours | FLA | FLA / ours | in a CUDA graph: ours | FLA | decode in place | in a graph | state copy floor |")
print("|---|---|---|---|---|---|---|---|---|")
for a, b in zip(ours["results"], fla["results"]):
    ratio = b["fla_api_ms"] / a["fla_api_ms"]
    print(f"| {a['shape']} | {ms(a['fla_api_ms'])} | {ms(b['fla_api_ms'])} | {ratio:.2f} | {ms(a.get('fla_api_graph_ms'))} | "
          f"{ms(b.get('fla_api_graph_ms'))} | {ms(a.get('decode_in_place_ms'))} | {ms(a.get('decode_in_place_graph_ms'))} | "
          f"{ms(a.get('state_copy_ms'))} |")
PY
