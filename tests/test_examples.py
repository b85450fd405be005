"""The examples run: examples/train.py for two families and a few steps (the full tiny run
takes minutes on the CPU; its loss curves are the example's output, not a test)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_train_example_runs(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), "--families", "transformer,gla+attn",
                    "--steps", "3", "--out", str(tmp_path)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    runs = json.loads((tmp_path / "train_tiny.json").read_text())["runs"]
    assert [r["family"] for r in runs] == ["transformer", "gla+attn"]
    for r in runs:
        assert len(r["train_bpb"]) == 3 and r["val_steps"] == [3]
        assert all(math.isfinite(x) and 0 < x < 9 for x in r["train_bpb"] + r["val_bpb"])  # 8 bits per byte at chance
