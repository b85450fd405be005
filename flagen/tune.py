"""`flagen tune`: time the chunked kernels' launch options on this GPU and write its tuning table
(flagen.runtime.tuning), which the ops then look up at run time.

Every kind (a chunked.TILES entry: h = chunk_fwd_h, dh = chunk_bwd_dh, o = chunk_fwd_o,
dv = chunk_bwd_dv, dqk = chunk_bwd_dqk; the delta rule's delta_wy, delta_h, delta_o, delta_dh,
delta_dw, delta_dwy) has a list of candidates (BK, BV, num_warps, num_stages). Round r sets every
kind to its r-th candidate at once (the kernels are independent, so one profiled
forward+backward times a candidate of each), and torch.profiler gives each kernel's CUDA time
per call. Worker processes compile the rounds first, in parallel, each in a process of its own
(a round whose kernels fault leaves its CUDA context unusable: it is reported, never timed).
The defaults are timed too, on their own, in every run: a round that faults takes none of its
entries' other candidates out of the running, the defaults included (pick_winners). An
entry's winner is the candidate with the least time summed over the variants and shapes that
read it, among those that ran everywhere without error; an entry with no such candidate is left
out of the table (the default stays).

Triton 3.6 miscompiles some combinations on Hopper (see chunked.TILES): wrong results, which
run fast. So every round is also checked before it is timed: its forward+backward (output and
every gradient) at CHECK_SHAPES (odd length, head dims below a tile, fp32 and bf16) must match
the default launch options' within CHECK_TOLERANCE; where it does not, each of the round's
entries is run alone to find the culprits, which are reported and never win. A new table still
goes with a run of tests/run_gpu.sh on that GPU before it is committed.

Off the GPU (the interpreter, for the tests) the whole forward+backward's wall time stands for
each kernel's, and the check runs at one small shape: it exercises the sweep, the check and the
table, it tunes nothing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import time
from pathlib import Path

KERNEL = {"h": "chunk_fwd_h", "dh": "chunk_bwd_dh", "o": "chunk_fwd_o", "dv": "chunk_bwd_dv",
          "dqk": "chunk_bwd_dqk", "delta_wy": "chunk_delta_wy", "delta_o": "chunk_delta_fwd_o",
          "delta_dw": "chunk_delta_bwd_dw", "delta_dwy": "chunk_delta_bwd_wy", "delta_h": "chunk_delta_fwd_h",
          "delta_dh": "chunk_delta_bwd_dh"}
CANDIDATES = {
    "h": [(64, 64, w, s) for w in (4, 8) for s in (1, 2, 3, 4)]
    + [(bk, bv, w, s) for bk, bv, ws in [(128, 64, (4, 8)), (128, 32, (4, 8)), (64, 32, (4,)), (32, 64, (4,)),
                                          (32, 32, (2, 4))] for w in ws for s in (2, 3)],
    # 4 warps with BV <= 32 miscompiles on the scalar and no-decay paths (chunked.TILES)
    "o": [(bk, bv, w, s) for bk in (64, 128) for bv in (64, 128) for w in (4, 8) for s in (1, 2, 3)]
    + [(bk, 32, 8, s) for bk in (64, 128) for s in (1, 2, 3)],
    # (one stage only: chunked.tiles never pipelines chunk_bwd_dqk, a Hopper miscompile)
    "dqk": [(bk, bv, w, 1) for bk in (32, 64, 128) for bv in (32, 64, 128) for w in (4, 8)],
}
CANDIDATES["dh"] = CANDIDATES["h"]
CANDIDATES["dv"] = CANDIDATES["o"]
# the chunked delta rule's (chunked_delta.launch_config; no tile below 32 there); the state walks
# hold a whole [K, BV] state (BK covers K whatever the cap; from K = 256 they take 8 warps even
# where a candidate says 4)
for _kind in ("delta_wy", "delta_o", "delta_dw", "delta_dwy"):
    CANDIDATES[_kind] = [(bk, bv, w, st) for bk in (32, 64) for bv in (32, 64) for w in (4, 8) for st in (1, 2, 3)]
CANDIDATES["delta_h"] = [(256, bv, w, st) for bv in (32, 64) for w in (4, 8) for st in (1, 2)]
CANDIDATES["delta_dh"] = CANDIDATES["delta_h"]
DELTA_KINDS = ("delta_wy", "delta_h", "delta_o", "delta_dh", "delta_dw", "delta_dwy")
DECAY_KINDS = ("h", "dh", "o", "dv", "dqk")


def parse_candidates(specs: list[str]) -> None:
    """--candidates KIND=BK,BV,W,S/BK,BV,W,S...: replace a kind's candidate list."""
    for spec in specs:
        kind, opts = spec.split("=")
        if kind not in CANDIDATES:
            raise ValueError(f"--candidates: unknown kind {kind!r}; kinds: {', '.join(CANDIDATES)}")
        CANDIDATES[kind] = [tuple(int(x) for x in o.split(",")) for o in opts.split("/")]


def entry_of(kind: str, decay: str, base: dict, path: str | None = None) -> str:
    """The TILES entry a variant's kernel of ``kind`` reads: "<kind>:<decay>" where that entry
    exists (or ``path`` asks for it: tune that decay path's own), else "<kind>"."""
    own = f"{kind}:{path or decay}"
    return own if path or own in base else kind


def round_tiles(kinds: list[str], r: int, decay: str, base: dict, path: str | None = None) -> dict:
    """TILES entries of round r for a variant of ``decay``: each kind's r-th candidate (kinds
    whose list is shorter sit this round out)."""
    return {entry_of(kind, decay, base, path): CANDIDATES[kind][r] for kind in kinds if r < len(CANDIDATES[kind])}


# The rounds' check (see above): (B, T, H, K, V, dtype) on the GPU, and off it; a gradient or
# output may differ from the defaults' by CHECK_TOLERANCE of its largest magnitude (other tiles
# only reorder fp32 sums and round the same operands: ~1e-6, or one bf16 step of an output,
# 2^-8; the miscompiles found are off by 10% to 100x)
CHECK_SHAPES = {"cuda": ((2, 130, 2, 128, 128, "bfloat16"), (2, 130, 2, 48, 100, "float32"),
                         (1, 130, 2, 32, 16, "bfloat16")),
                "cpu": ((1, 20, 1, 16, 8, "float32"),)}
CHECK_TOLERANCE = 1e-2


def raw_inputs(spec, B: int, T: int, H: int, K: int, device, generator=None) -> dict:
    """A variant's inputs besides q, k, v, as a model would feed them (fp32): beta in (0, 1) or
    its raw input ~ N(0, 1); log decays in [-1, 0) or the gate's raw input ~ N(0, 1), A_log
    from log(1..16), dt_bias ~ N(0, 0.25); constants -5; the low-rank form's a = -kk,
    b = kk * (0..1) with kk a unit vector. Shared by `flagen tune` and the GPU tests."""
    import torch
    import torch.nn.functional as F
    shapes = {"token": (B, T, H), "token_key": (B, T, H, K), "head": (H,), "head_key": (H, K)}
    out = {}
    for x in spec.inputs:
        if x.shape.value == "const":
            out[x.name] = -5.0
            continue
        u = torch.rand(shapes[x.shape.value], generator=generator, device=device)
        n = torch.randn(shapes[x.shape.value], generator=generator, device=device)
        raw = str(spec.beta if x.name == "beta" else spec.gate) != x.name
        if x.name == "A_log":
            out[x.name] = torch.log(1 + 15 * u)
        elif x.name == "dt_bias":
            out[x.name] = 0.5 * n
        elif raw:
            out[x.name] = n
        else:
            out[x.name] = u if x.name == "beta" else -(0.001 + u)
    if spec.low_rank:
        kk = F.normalize(torch.randn(B, T, H, K, generator=generator, device=device), dim=-1)
        out["a"], out["b"] = -kk, kk * torch.rand(B, T, H, 1, generator=generator, device=device)
    return out


def inputs_for(spec, B: int, T: int, H: int, D: int, device, dtype, V: int | None = None):
    """q, k [B, T, H, D], v [B, T, H, V or D] in ``dtype`` (keys of unit norm where the delta
    rule would blow up on raw ones) and the variant's other inputs (raw_inputs), as leaves."""
    import torch
    import torch.nn.functional as F
    q, k = (torch.randn(B, T, H, D, device=device) for _ in range(2))
    v = torch.randn(B, T, H, V or D, device=device)
    if spec.delta and not spec.qk_l2norm:
        k = F.normalize(k, dim=-1)
    inputs = raw_inputs(spec, B, T, H, D, device)
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v)]
    leaves += [t.requires_grad_(True) for t in inputs.values() if torch.is_tensor(t) and t.is_floating_point()]
    return leaves[:3], inputs


def make_step(variant: str, B: int, T: int, H: int, D: int, device="cuda", variant_file=None,
              V: int | None = None, dtype: str | None = None):
    """(forward+backward of ``get_op(variant).chunk`` at one shape, the variant's decay path);
    the step returns [o, every input's gradient]. q/k/v in ``dtype``: by default bf16 on the
    GPU, fp32 elsewhere."""
    import torch
    op, spec = _op_and_spec(variant, variant_file)
    dtype = getattr(torch, dtype) if dtype else torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    (q, k, v), inputs = inputs_for(spec, B, T, H, D, device, dtype, V)
    leaves = [q, k, v, *(t for t in inputs.values() if torch.is_tensor(t) and t.requires_grad)]
    do = torch.randn_like(v)

    def step():
        o = op.chunk(q, k, v, **inputs)[0]
        o.backward(do)
        results = [o.detach(), *(x.grad for x in leaves)]
        for x in leaves:
            x.grad = None
        return results
    return step, op.module.DECAY


def _op_and_spec(variant: str, variant_file: str | None):
    from flagen.codegen import build
    from flagen.ir.library import BUILTINS
    from flagen.runtime.op import get_op
    if variant_file:
        specs = {s.name: s for s in build.load_user_specs(Path(variant_file))}
        if variant not in specs:
            raise ValueError(f"{variant!r} is not in {variant_file} (it has {', '.join(sorted(specs))})")
        spec = specs[variant]
        return get_op(spec), spec
    if variant not in BUILTINS:
        raise ValueError(f"unknown variant {variant!r}; built-ins: {', '.join(sorted(BUILTINS))}")
    return get_op(variant), BUILTINS[variant]


def run_round(step, tiles: dict, base: dict) -> dict[str, str]:
    """Run with this round's tiles; on failure, find which kinds fail alone. Returns {entry: error}."""
    from flagen.runtime import chunked
    chunked.TILES.update(base)
    chunked.TILES.update(tiles)
    try:
        step()
        return {}
    except Exception:  # noqa: BLE001 - out of shared memory etc.: isolate the culprits
        errors = {}
        for entry, opt in tiles.items():
            chunked.TILES.update(base)
            chunked.TILES[entry] = opt
            try:
                step()
            except Exception as e:  # noqa: BLE001
                errors[entry] = f"{type(e).__name__}: {str(e)[:120]}"
        return errors
    finally:
        chunked.TILES.update(base)


def _mismatch(got: list, want: list) -> str | None:
    """Which result of a step differs from the defaults' beyond CHECK_TOLERANCE, or None."""
    names = ["o", "dq", "dk", "dv"] + [f"d(input {i})" for i in range(len(want))]
    for name, a, b in zip(names, got, want):
        a, b = a.float(), b.float()
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a - b).abs().max().item() if b.numel() else 0.0
        if not err <= CHECK_TOLERANCE * max(scale, 1e-6):  # (NaN fails too)
            return f"{name} off by {err:.3g} (largest {scale:.3g})"
    return None


def wrong_entries(variant: str, tiles: dict, base: dict, device: str = "cuda",
                  variant_file: str | None = None) -> dict[str, str]:
    """{entry: why} for the entries of a round whose results differ from the defaults' at
    CHECK_SHAPES. A round that differs while no entry alone does has every entry reported."""
    from flagen.runtime import chunked

    def run(step, entries):
        chunked.TILES.update(base)
        chunked.TILES.update(entries)
        try:
            return step()
        finally:
            chunked.TILES.update(base)

    wrong = {}
    for B, T, H, K, V, dtype in CHECK_SHAPES["cuda" if device == "cuda" else "cpu"]:
        step, _ = make_step(variant, B, T, H, K, device=device, variant_file=variant_file, V=V, dtype=dtype)
        want = run(step, {})
        if _mismatch(run(step, tiles), want) is None:
            continue
        where = f"B{B}_T{T}_H{H}_K{K}_V{V} {dtype}"
        alone = {e: _mismatch(run(step, {e: o}), want) for e, o in tiles.items()}
        culprits = {e: why for e, why in alone.items() if why} or {e: "only with the round's other entries"
                                                                  for e in tiles}
        for e, why in culprits.items():
            wrong.setdefault(e, f"wrong results at {where}: {why}")
    return wrong


def _warm(job):
    """Worker, one round per process: compile it (T = 1024: the same specialisations as the
    timed shapes), run it once and check its results (wrong_entries). Returns (variant, round,
    error, {entry: why} of wrong results)."""
    variant, variant_file, B, H, D, kinds, r, candidates, path = job
    parse_candidates(candidates)  # spawned: the parent's --candidates again
    import torch

    from flagen.runtime import chunked, tuning
    try:
        tuning.hold()
        base = dict(chunked.TILES)
        step, decay = make_step(variant, B, 1024, H, D, variant_file=variant_file)
        tiles = round_tiles(kinds, r, decay, base, path)
        errors = run_round(step, tiles, base)
        wrong = wrong_entries(variant, {e: o for e, o in tiles.items() if e not in errors}, base,
                              variant_file=variant_file)
        torch.cuda.synchronize()
        return variant, r, None, wrong
    except Exception as e:  # noqa: BLE001 - a fault: report it, the process ends with the task
        return variant, r, f"{type(e).__name__}: {str(e)[:120]}", {}


def _time_round(step, tiles, base, reps, device_type) -> dict[str, float]:
    """ms per call of each kind's kernel in this round (off the GPU: the whole step's)."""
    import torch

    from flagen.runtime import chunked
    chunked.TILES.update(tiles)
    try:
        # (run_round has just run the step with these tiles: compiled and warm)
        if device_type != "cuda":
            t0 = time.perf_counter()
            for _ in range(reps):
                step()
            ms = (time.perf_counter() - t0) / reps * 1000
            return {entry: ms for entry in tiles}
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                step()
            torch.cuda.synchronize()
        times = {e.key: e.device_time_total / e.count / 1000 for e in prof.key_averages() if e.count}
        out = {}
        for entry in tiles:
            keys = [k for k in times if k.endswith(KERNEL[entry.split(":")[0]])]
            if keys:
                out[entry] = times[keys[0]]
        return out
    finally:
        chunked.TILES.update(base)


def sweep(variants: list[str], shapes: list[tuple[int, int, int, int]], kinds: list[str], path: str | None = None,
          workers: int = 1, reps: int = 5, candidates: list[str] = (), variant_file: str | None = None,
          device: str = "cuda", log=print) -> dict:
    """Time every round of ``kinds`` for each variant and shape; returns {"base", "rows",
    "winners"}: rows (variant, shape, entry, tiles, ms or error), and per entry the candidate
    with the least total time over the variant-shapes that ran it without error."""
    import torch

    from flagen.runtime import chunked, tuning
    parse_candidates(list(candidates))
    tuning.hold()
    base = dict(chunked.TILES)
    n_rounds = max(len(CANDIDATES[k]) for k in kinds)
    faults, wrong = {}, {}  # {(variant, round): error}, {(variant, round): {entry: why}}
    checked = device == "cuda" and workers > 0
    if checked:
        B, _, H, D = shapes[0]
        jobs = [(v, variant_file, B, H, D, kinds, r, list(candidates), path) for v in variants for r in range(n_rounds)]
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            for v, r, err, bad in pool.map(_warm, jobs, chunksize=1):
                if err:
                    faults[v, r] = err
                wrong[v, r] = bad
        for (v, r), err in sorted(faults.items()):
            log(f"round {r} of {v} faulted in its worker, not timed: {err}")
    rows = []
    for variant in variants:
        for B, T, H, D in shapes:
            shape = f"B{B}_T{T}_H{H}_D{D}"
            step, decay = make_step(variant, B, T, H, D, device=device, variant_file=variant_file)
            # the defaults, timed on their own: a round that faults (one of its entries, at a
            # check shape) must not take the defaults out of the running with it
            defaults = {e: tuple(base.get(e, base[e.split(":")[0]])) for e in round_tiles(kinds, 0, decay, base, path)}
            run_round(step, defaults, base)
            times = _time_round(step, defaults, base, reps, device)
            rows += [dict(variant=variant, shape=shape, entry=e, tiles=list(o), ms=times[e])
                     for e, o in defaults.items() if e in times]
            for r in range(n_rounds):
                tiles = round_tiles(kinds, r, decay, base, path)
                if (variant, r) in faults:
                    rows += [dict(variant=variant, shape=shape, entry=e, tiles=list(o), error="round faulted: "
                                  + faults[variant, r]) for e, o in tiles.items()]
                    continue
                errors = run_round(step, tiles, base)
                if not checked and (variant, r) not in wrong:  # (the workers checked the GPU's; once a round)
                    wrong[variant, r] = wrong_entries(variant, {e: o for e, o in tiles.items() if e not in errors},
                                                      base, device=device, variant_file=variant_file)
                errors.update(wrong.get((variant, r), {}))
                good = {e: o for e, o in tiles.items() if e not in errors}
                times = _time_round(step, good, base, reps, device) if good else {}
                for entry, opt in tiles.items():
                    row = dict(variant=variant, shape=shape, entry=entry, tiles=list(opt))
                    if entry in errors:
                        row["error"] = errors[entry]
                    elif entry in times:
                        row["ms"] = times[entry]
                    else:
                        continue  # the variant has no such kernel (a decay family's kind on the delta rule)
                    rows.append(row)
            if device == "cuda":
                torch.cuda.synchronize()
    for (v, r), bad in sorted(wrong.items()):
        for entry, why in sorted(bad.items()):
            log(f"round {r} of {v}: {entry} {tuple(CANDIDATES[entry.split(':')[0]][r])} gives {why}")
    return dict(base={k: list(v) for k, v in base.items()}, rows=rows, winners=pick_winners(rows, base))


def pick_winners(rows: list[dict], base: dict) -> dict:
    """Per entry, the candidate with the least time summed over the (variant, shape) runs that
    read the entry, among those timed in every run and never wrong or failing on their own (a
    faulted round blames none of its entries: they are only untimed there); with the
    default's time where it was timed."""
    winners = {}
    for entry in {row["entry"] for row in rows}:
        runs = {(row["variant"], row["shape"]) for row in rows if row["entry"] == entry}
        times, bad = {}, set()  # {tiles: {(variant, shape): ms}}; tiles that failed on their own
        for row in rows:
            if row["entry"] != entry:
                continue
            key, run = tuple(row["tiles"]), (row["variant"], row["shape"])
            if "ms" in row:
                times.setdefault(key, {})[run] = min(row["ms"], times.get(key, {}).get(run, float("inf")))
            elif not row["error"].startswith("round faulted"):  # (a faulted round names no culprit)
                bad.add(key)
        complete = {k: sum(t.values()) for k, t in times.items() if len(t) == len(runs) and k not in bad}
        if complete:
            best = min(complete, key=complete.get)
            default = tuple(base.get(entry, base[entry.split(":")[0]]))
            winners[entry] = dict(tiles=list(best), ms=complete[best], default_ms=complete.get(default))
    return winners


def table(result: dict, device_name: str, arch: str, command: str, variants: list[str] | None = None) -> dict:
    """The tuning table (flagen.runtime.tuning) from a sweep: the winners' tiles and timings;
    with ``variants``, a table for those variants only."""
    import torch
    import triton
    data = dict(device=device_name, arch=arch, versions=dict(torch=torch.__version__, triton=triton.__version__),
                command=command)
    if variants:
        data["variants"] = list(variants)
    return dict(data, tiles={e: w["tiles"] for e, w in sorted(result["winners"].items())},
                timings={e: dict(ms=round(w["ms"], 4), default_ms=w["default_ms"] and round(w["default_ms"], 4))
                         for e, w in sorted(result["winners"].items())})


def write_table(data: dict, path: Path) -> None:
    """Written atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    text = json.dumps(data, indent=1)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
