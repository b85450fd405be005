"""Per-GPU tuning tables (flagen.runtime.tuning) and `flagen tune` (flagen/tune.py): a table is
looked up once per process and replaces TILES entries, FLAGEN_CHUNK_TILES wins over it, a GPU
without one runs the defaults with a one-line hint, a malformed table is an error naming the
file; `flagen tune` sweeps candidates and writes a table the runtime reads (on the CPU through
the interpreter: the machinery, not a tuning)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from flagen import cli, tune
from flagen.runtime import chunked, tuning


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A "Fake GPU 9000" (sm99) with an empty user cache; TILES restored afterwards."""
    monkeypatch.setenv("FLAGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "device_key", lambda device: ("fake-gpu-9000", "sm99"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 9000")
    tuning.reset()
    yield tmp_path / "cache" / "tuning"
    monkeypatch.undo()  # (the test's FLAGEN_CHUNK_TILES entries first: reset restores from them)
    tuning.reset()


def _write(folder, name, tiles):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(dict(device="Fake GPU 9000", arch="sm99", tiles=tiles)))


def test_table_is_applied_once_and_the_environment_wins(fake_gpu, monkeypatch):
    monkeypatch.setitem(chunked.ENV_TILES, "dqk", (32, 32, 4, 1))
    tuning.reset()
    _write(fake_gpu, "fake-gpu-9000.json", {"o": [32, 128, 8, 2], "delta_h": [256, 64, 8, 1], "dqk": [64, 64, 8, 1]})
    path = tuning.apply(torch.device("cuda", 0))
    assert path.endswith("fake-gpu-9000.json")
    assert chunked.TILES["o"] == (32, 128, 8, 2) and chunked.TILES["delta_h"] == (256, 64, 8, 1)
    assert chunked.TILES["dqk"] == (32, 32, 4, 1)  # FLAGEN_CHUNK_TILES's
    # once per process: a later table is not read until reset
    _write(fake_gpu, "fake-gpu-9000.json", {"o": [64, 64, 4, 1]})
    tuning.ensure(torch.device("cuda", 0))
    assert chunked.TILES["o"] == (32, 128, 8, 2)
    tuning.reset()
    assert chunked.TILES["o"] == chunked.DEFAULT_TILES["o"] and chunked.TILES["dqk"] == (32, 32, 4, 1)


def test_architecture_table_and_cpu_tensors(fake_gpu):
    _write(fake_gpu, "sm99.json", {"h": [32, 64, 4, 2]})
    tuning.ensure(torch.device("cpu"))  # nothing for CPU tensors
    assert chunked.TILES["h"] == chunked.DEFAULT_TILES["h"]
    assert tuning.apply(torch.device("cuda", 0)).endswith("sm99.json")
    assert chunked.TILES["h"] == (32, 64, 4, 2)


def test_no_table_runs_the_defaults_with_a_hint(fake_gpu):
    with pytest.warns(UserWarning, match="no tuning table for Fake GPU 9000 .*flagen tune"):
        assert tuning.apply(torch.device("cuda", 0)) is None
    assert chunked.TILES == {**chunked.DEFAULT_TILES, **chunked.ENV_TILES}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuning.ensure(torch.device("cuda", 0))  # said once


@pytest.mark.parametrize("content", ["{not json", json.dumps(dict(tiles={"nonsense": [1, 2, 3]})),
                                     json.dumps(dict(tiles={"o": [64, 64]})), json.dumps(dict(device="x"))])
def test_a_malformed_table_names_its_file(fake_gpu, content):
    fake_gpu.mkdir(parents=True)
    (fake_gpu / "fake-gpu-9000.json").write_text(content)
    with pytest.raises(ValueError, match="fake-gpu-9000.json"):
        tuning.apply(torch.device("cuda", 0))


def test_flagen_tune_writes_a_table_the_runtime_reads(fake_gpu, tmp_path, capsys):
    """Two candidates of chunk_fwd_o for simple GLA (its "o" entry) and of chunk_delta_bwd_wy for
    Gated DeltaNet, which reads "delta_dwy" (scalar path): a table with both entries, each one
    of its candidates, and the command that made it."""
    out = tmp_path / "table.json"
    argv = ["tune", "--device", "cpu", "--variants", "simple_gla,gated_delta_rule", "--shapes", "1,20,1,16",
            "--kinds", "o,delta_dwy", "--candidates", "o=64,64,4,1/32,32,4,1",
            "--candidates", "delta_dwy=32,32,4,1/64,64,4,1", "--reps", "1", "--workers", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["tiles"]) == {"o", "delta_dwy"}
    # a candidate, or the default (timed too)
    assert tuple(data["tiles"]["o"]) in tune.CANDIDATES["o"] + [chunked.DEFAULT_TILES["o"]]
    assert tuple(data["tiles"]["delta_dwy"]) in tune.CANDIDATES["delta_dwy"] + [chunked.DEFAULT_TILES["delta_dwy"]]
    assert data["command"].startswith("flagen tune --device cpu") and data["versions"]["triton"]
    assert "table: " in capsys.readouterr().out
    assert tuning.read_table(out) == {k: tuple(v) for k, v in data["tiles"].items()}


def test_a_candidate_with_wrong_results_never_wins(fake_gpu, tmp_path, monkeypatch, capsys):
    """Triton miscompiles some launch options on Hopper: wrong results, fast. Here one is faked
    (chunk_fwd_o's output off by 1 with o = (32, 32, 4, 1), which also runs faster than the
    correct ones): `flagen tune` checks every round against the defaults' results, names the
    culprit entry and leaves it out of the table."""
    import time
    make_step = tune.make_step
    bad, good = (32, 32, 4, 1), (64, 64, 4, 1)

    def miscompiled(*args, **kwargs):
        step, decay = make_step(*args, **kwargs)

        def wrong_when_bad():
            results = step()
            if chunked.TILES["o"] == bad:
                results[0] = results[0] + 1
            else:
                time.sleep(0.05)
            return results
        return wrong_when_bad, decay
    monkeypatch.setattr(tune, "make_step", miscompiled)
    out = tmp_path / "table.json"
    argv = ["tune", "--device", "cpu", "--variants", "simple_gla", "--shapes", "1,20,1,16", "--kinds", "o,dv",
            "--candidates", f"o={','.join(map(str, good))}/{','.join(map(str, bad))}",
            "--candidates", "dv=64,64,4,1/32,32,4,1", "--reps", "1", "--workers", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "round 1 of simple_gla: o (32, 32, 4, 1) gives wrong results at B1_T20_H1_K16_V8 float32: o off by 1" \
        in printed
    assert "dv (32, 32, 4, 1) gives" not in printed  # the round's other entry, right alone, is kept
    tiles = json.loads(out.read_text())["tiles"]
    assert tuple(tiles["o"]) in (good, chunked.DEFAULT_TILES["o"]) and "dv" in tiles


def test_winners_keep_the_defaults_through_a_faulted_round():
    """A faulted round (its worker's CUDA context lost: no culprit known) leaves its candidates
    untimed, not blamed: the defaults, timed on their own, still win where fastest; a candidate
    wrong on its own never wins; a candidate timed twice in a run counts once."""
    base = {"o": (64, 128, 8, 3), "dqk": (64, 64, 4, 1)}
    runs = [("simple_gla", "B2"), ("simple_gla", "B4")]
    rows = []
    for v, s in runs:
        rows += [dict(variant=v, shape=s, entry="o", tiles=[64, 128, 8, 3], ms=1.0),  # the defaults, alone
                 dict(variant=v, shape=s, entry="dqk", tiles=[64, 64, 4, 1], ms=2.0),
                 # round 0 faulted: the defaults' own tile among its candidates
                 dict(variant=v, shape=s, entry="o", tiles=[64, 128, 8, 3], error="round faulted: illegal address"),
                 dict(variant=v, shape=s, entry="dqk", tiles=[32, 32, 4, 1], error="round faulted: illegal address"),
                 # round 1: a faster o that is wrong, a faster dqk that is right
                 dict(variant=v, shape=s, entry="o", tiles=[64, 128, 4, 3], error="wrong results at ..."),
                 dict(variant=v, shape=s, entry="dqk", tiles=[128, 64, 8, 1], ms=1.5),
                 dict(variant=v, shape=s, entry="dqk", tiles=[128, 64, 8, 1], ms=1.7)]
    rows.append(dict(variant="simple_gla", shape="B2", entry="o", tiles=[64, 128, 4, 3], ms=0.5))
    winners = tune.pick_winners(rows, base)
    assert winners["o"] == dict(tiles=[64, 128, 8, 3], ms=2.0, default_ms=2.0)
    assert winners["dqk"] == dict(tiles=[128, 64, 8, 1], ms=3.0, default_ms=4.0)


def test_entries_follow_the_decay_path():
    base = {"h": (64, 64, 4, 3), "h:key": (32, 128, 4, 3)}
    assert tune.entry_of("h", "key", base) == "h:key"
    assert tune.entry_of("h", "scalar", base) == "h"
    assert tune.entry_of("h", "scalar", base, path="scalar") == "h:scalar"


@pytest.mark.parametrize("args,message", [
    (["--kinds", "o,nonsense"], "--kinds: unknown nonsense"),
    (["--shapes", "1,2,3"], "--shapes must be B,T,H,D"),
    (["--variants", "no_such_variant"], "unknown variant 'no_such_variant'"),
])
def test_flagen_tune_user_errors_are_one_line(fake_gpu, tmp_path, capsys, args, message):
    argv = ["tune", "--device", "cpu", "--shapes", "1,20,1,16", "--kinds", "o", "--candidates", "o=64,64,4,1",
            "--reps", "1", "--workers", "0", "--out", str(tmp_path / "t.json"), *args]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_flagen_tune_a_user_variant_into_the_user_cache(fake_gpu, capsys):
    """A user variant (examples/variants/) is tuned the same way; with no --out its table goes
    to the user cache's tuning/ (here named after the interpreter's "cpu"), for that variant
    only."""
    from pathlib import Path
    variants = Path(__file__).resolve().parent.parent / "examples" / "variants" / "novel_delta_rules.py"
    argv = ["tune", "--device", "cpu", "--variant-file", str(variants), "--variants", "gated_delta_rule_learned_floor",
            "--shapes", "1,20,1,16", "--kinds", "delta_dwy", "--candidates", "delta_dwy=32,32,4,1/64,64,4,1",
            "--reps", "1", "--workers", "0"]
    assert cli.main(argv) == 0
    table = fake_gpu / "cpu@gated_delta_rule_learned_floor.json"
    assert f"table: {table}" in capsys.readouterr().out
    assert tuple(tuning.read_table(table)["delta_dwy"]) in tune.CANDIDATES["delta_dwy"] + [chunked.DEFAULT_TILES["delta_dwy"]]
    assert tuning.table_variants(table) == ["gated_delta_rule_learned_floor"]


def test_a_user_variants_table_changes_no_other_variant(fake_gpu, monkeypatch):
    """On top of the GPU's table, a table made for a user variant sets that variant's launch
    options only: the built-ins keep the GPU table's (or the defaults); FLAGEN_CHUNK_TILES
    still wins over it."""
    _write(fake_gpu, "fake-gpu-9000.json", {"o": [32, 128, 8, 2]})
    mine = {"o": [64, 64, 4, 1], "delta_dwy:scalar": [32, 32, 4, 1], "dqk": [32, 64, 4, 1]}
    fake_gpu.joinpath("fake-gpu-9000@mine.json").write_text(json.dumps(dict(variants=["mine"], tiles=mine)))
    fake_gpu.joinpath("sm99@mine.json").write_text(json.dumps(dict(variants=["mine"], tiles={"h": [16, 16, 4, 1]})))
    monkeypatch.setitem(chunked.ENV_TILES, "dqk", (64, 32, 4, 1))
    tuning.reset()
    assert tuning.apply(torch.device("cuda", 0)).endswith("fake-gpu-9000.json")
    assert chunked.entry_tiles("o", "scalar") == (32, 128, 8, 2)  # a built-in: the GPU's table
    assert chunked.entry_tiles("o", "scalar", "gla") == (32, 128, 8, 2)
    assert chunked.entry_tiles("o", "scalar", "mine") == (64, 64, 4, 1)
    assert chunked.entry_tiles("delta_dwy", "scalar", "mine") == (32, 32, 4, 1)
    assert chunked.entry_tiles("delta_dwy", "key", "mine") == chunked.DEFAULT_TILES["delta_dwy:key"]
    assert chunked.entry_tiles("dqk", "scalar", "mine") == (64, 32, 4, 1)  # FLAGEN_CHUNK_TILES's
    monkeypatch.setitem(chunked.ENV_TILES, "o:scalar", (32, 32, 4, 1))  # the environment's, for the decay path
    monkeypatch.setitem(chunked.TILES, "o:scalar", (32, 32, 4, 1))
    assert chunked.entry_tiles("o", "scalar", "mine") == (32, 32, 4, 1)
    assert chunked.entry_tiles("o", "key", "mine") == (64, 64, 4, 1)
    assert chunked.entry_tiles("h", "scalar", "mine") == chunked.DEFAULT_TILES["h"]  # the GPU's own table for it won
    assert chunked.tiles("o", 128, 128, "key", 2, "mine")[:2] == (64, 64)
    tuning.reset()
    assert "mine/o" not in chunked.TILES


def test_a_table_with_bad_variants_names_its_file(fake_gpu):
    _write(fake_gpu, "fake-gpu-9000.json", {"o": [32, 128, 8, 2]})
    fake_gpu.joinpath("fake-gpu-9000@x.json").write_text(json.dumps(dict(variants="x", tiles={"o": [64, 64, 4, 1]})))
    with pytest.raises(ValueError, match="fake-gpu-9000@x.json.*variants"):
        tuning.apply(torch.device("cuda", 0))
    tuning.reset()
    fake_gpu.joinpath("fake-gpu-9000@x.json").write_text(json.dumps(dict(tiles={"o": [64, 64, 4, 1]})))
    with pytest.raises(ValueError, match="fake-gpu-9000@x.json lists no"):
        tuning.apply(torch.device("cuda", 0))


def test_flagen_tune_applies_no_table_while_it_times(fake_gpu):
    """A sweep sets TILES itself: a table applied on its first step (say the user variant's own
    from an earlier run) would override every candidate it times (tuning.hold)."""
    fake_gpu.mkdir(parents=True, exist_ok=True)
    fake_gpu.joinpath("fake-gpu-9000@mine.json").write_text(json.dumps(dict(variants=["mine"],
                                                                            tiles={"o": [64, 64, 4, 1]})))
    _write(fake_gpu, "fake-gpu-9000.json", {"o": [32, 128, 8, 2]})
    tuning.hold()
    tuning.ensure(torch.device("cuda", 0))
    assert "mine/o" not in chunked.TILES and chunked.TILES["o"] == chunked.DEFAULT_TILES["o"]
