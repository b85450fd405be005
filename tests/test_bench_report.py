"""The benchmark report (benchmarks/compare_chunk.py, benchmarks/roofline.py) on the committed
H200 results: ratios as FLA / ours, TFLOP/s and floor shares from the conventions, the shape
sets; the plot when matplotlib is there. (The timings themselves need a GPU.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_chunk  # noqa: E402
import roofline  # noqa: E402
from bench_chunk import SHAPE_SETS, parse_shapes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _load(name):
    return json.loads((RESULTS / name).read_text())


def test_conventions():
    shape = "B2_T16384_H16_D128"
    assert roofline.parse_shape(shape) == (2, 16384, 16, 128)
    # linear in B*T*H; the delta rule's extra terms; backward 3x
    assert roofline.flops("chunk_gla", "B4_T16384_H16_D128", False) == 2 * roofline.flops("chunk_gla", shape, False)
    assert roofline.flops("chunk_kda", shape, False) > roofline.flops("chunk_gla", shape, False)
    assert roofline.flops("chunk_kda", shape, True) == 3 * roofline.flops("chunk_kda", shape, False)
    # chunk_gla forward at D = 128, C = 64: 2 T C 256 + 4 T 128^2 per head
    assert roofline.flops("chunk_gla", "B1_T64_H1_D128", False) == 2 * 64 * 64 * 256 + 4 * 64 * 128 * 128
    # bytes: q, k, v, o and per-key gates in bf16
    assert roofline.bytes_moved("chunk_gla", "B1_T1_H1_D128", False) == 2 * (3 * 128 + 128 + 128)
    assert roofline.floor_ms("chunk_gla", shape, False, None) is None
    floor = roofline.floor_ms("chunk_gla", shape, False, dict(tflops=1000.0, gbps=1000.0))
    assert floor == pytest.approx(1e3 * max(roofline.flops("chunk_gla", shape, False) / 1e15,
                                            roofline.bytes_moved("chunk_gla", shape, False) / 1e12))


def test_shape_sets():
    assert parse_shapes("quick") == SHAPE_SETS["quick"]
    assert parse_shapes("quick,2x16384x16x128,1x64x2x32") == [*SHAPE_SETS["quick"], (2, 16384, 16, 128), (1, 64, 2, 32)]
    assert len(parse_shapes("suite")) == 6 and all(B * T == 32768 for B, T, _, _ in parse_shapes("sweep"))
    with pytest.raises(ValueError, match="BxTxHxD"):
        parse_shapes("4x2048")


def test_table_of_the_committed_run(tmp_path):
    ours, fla, sdpa = (_load(f"delta_h200_{n}.json") for n in ("flagen", "fla060", "sdpa"))
    ours["env"]["ceilings"] = dict(tflops=800.0, gbps=4000.0)
    lines = compare_chunk.table(ours, fla, sdpa)
    row = next(line for line in lines if line.startswith("| chunk_kda | 2_16384_16_128 "))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    ours_fwd, fla_fwd, ratio = float(cells[2]), float(cells[3]), float(cells[4])
    assert ratio == pytest.approx(fla_fwd / ours_fwd, abs=0.006)
    tflops_fwd = float(cells[10].split(" / ")[0])
    # by hand: B H T [2 C (K + V) + 4 K V + 2 C K + 2 C (K + V) + 2 K V + C^2 / 3], C = 64, K = V = 128
    per_token = 2 * 64 * 256 + 4 * 128 * 128 + 2 * 64 * 128 + 2 * 64 * 256 + 2 * 128 * 128 + 64 * 64 / 3
    assert tflops_fwd == pytest.approx(2 * 16 * 16384 * per_token / (ours_fwd * 1e9), abs=1)
    share_fwd = float(cells[11].split(" / ")[0])
    assert 0 < share_fwd < 1
    gdn = next(line for line in lines if line.startswith("| chunk_gated_delta_rule | 4_2048_16_128 "))
    assert "refused" in gdn
    out = compare_chunk.plot({"ours": ours}, str(tmp_path / "p.png"))
    try:
        import matplotlib  # noqa: F401
        assert out.startswith("no plot: no op was timed at several T"), out
    except ImportError:
        assert out == "no plot: matplotlib is not installed"


def test_plot_of_a_sweep(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [dict(op="chunk_gla", shape=f"B{32768 // T}_T{T}_H16_D128", fwd_ms=T / 1000, fwd_bwd_ms=T / 300)
            for T in (1024, 2048, 4096)]
    path = tmp_path / "sweep.png"
    assert compare_chunk.plot({"ours": dict(results=rows)}, str(path)) == f"plot: {path}"
    assert path.stat().st_size > 1000


def test_first_call_script_runs_its_processes(tmp_path):
    """benchmarks/bench_first_call.py on the interpreter: a cold and a warm process per op, each
    timing its start, import and first forward+backward (on a GPU the same calls compile), the
    call split into its inputs, forward and backward, and with --profile the functions that
    took the call's time."""
    import os
    import subprocess
    out = tmp_path / "first_call.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_first_call.py"), "--device", "cpu", "--ops",
                    "chunk_simple_gla", "--shape", "1,20,1,16", "--out", str(out), "--profile", "5"], check=True,
                   env=env, capture_output=True)
    (row,) = json.loads(out.read_text())["results"]
    for run in ("cold", "warm"):
        assert set(row[run]) == {"start_s", "import_s", "first_call_s", "inputs_s", "forward_s", "backward_s",
                                 "profile"}, row[run]
        assert len(row[run]["profile"]) == 5 and row[run]["profile"][0][1].endswith("(call)"), row[run]["profile"]


@pytest.mark.parametrize("variant,skipped", [("gated_delta_rule_l2norm", {"no_block_pairs", "no_cross_block_pairs"}),
                                             ("kda_l2norm", {"fp32_gate_sums"})])
def test_delta_ablations_apply_and_run(variant, skipped):
    """benchmarks/ablate_delta.py's substitutions each apply to the generated module as often as
    stated, or the variant's kernels lack that piece (skipped), and every ablated module runs
    (interpreter, tiny shape: the timing is the GPU's)."""
    import os
    import subprocess
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablate_delta.py"), "--smoke", "--variant", variant],
                         check=True, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}).stdout
    from ablate_delta import ABLATIONS
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["ablation"] for r in rows] == list(ABLATIONS)
    assert {r["ablation"] for r in rows if "skipped" in r} == skipped
