"""Per-kernel times of the chunked ops over candidate tiles (GPU), to choose chunked.TILES.

    python benchmarks/tune_chunk.py [--ops chunk_retention,chunk_simple_gla]
        [--shapes "2,16384,16,128;4,2048,16,128"] [--kinds h,dh,o,dv,dqk] [--workers 12] [--out tune.json]

Every kind (a TILES entry: h = chunk_fwd_h, dh = chunk_bwd_dh, o = chunk_fwd_o, dv = chunk_bwd_dv,
dqk = chunk_bwd_dqk; for the delta rule's kernels delta_wy, delta_h, delta_o, delta_dh, delta_dw,
delta_dwy, e.g. `--ops chunk_gated_delta_rule,chunk_kda --kinds delta_wy,delta_dwy,delta_dw`)
has a list of candidates (BK, BV, num_warps, num_stages). Round r sets
every kind to its r-th candidate at once (the kernels are independent, so one profiled
forward+backward times a candidate of each), and torch.profiler gives each kernel's CUDA time
per call. Worker processes compile the rounds first, in parallel, into Triton's cache.

Timing only: Triton 3.6 miscompiles some combinations on Hopper (see chunked.TILES), so a
winner goes into TILES only after tests/run_gpu.sh passes with it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os

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
    "dqk": [(bk, bv, w, 1) for bk in (32, 64, 128) for bv in (32, 64, 128) for w in (4, 8)]
    + [(64, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2)],
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


def _entry(kind: str, path: str | None) -> str:
    """The TILES entry a kind's candidates go to: "<kind>:<path>" for one decay path (which
    overrides "<kind>" there), else "<kind>"."""
    return f"{kind}:{path}" if path else kind


def _round(kinds: list[str], r: int, base: dict, path: str | None = None) -> dict:
    """TILES entries of round r: each kind's r-th candidate (its default once the list runs out)."""
    return {_entry(kind, path): CANDIDATES[kind][r] if r < len(CANDIDATES[kind]) else base.get(_entry(kind, path), base[kind])
            for kind in kinds}


def _setup(name: str, B: int, T: int, H: int, D: int, chunk_size: int | None = None):
    import torch
    import torch.nn.functional as F

    from benchmarks.bench_chunk import fla_function, make_inputs
    fn = fla_function(name)
    a, kw, grads = make_inputs(name, B, T, H, D, torch, F)
    if chunk_size:
        kw["chunk_size"] = chunk_size
    do = torch.randn_like(a["v"])

    def fwd_bwd():
        fn(**a, **kw)[0].backward(do)
        for x in grads:
            x.grad = None
    return fwd_bwd


def _run_round(fwd_bwd, tiles: dict, base: dict, chunked) -> dict[str, str]:
    """Run with this round's tiles; on failure, find which kinds fail alone. Returns {kind: error}."""
    chunked.TILES.update(base)
    chunked.TILES.update(tiles)
    try:
        fwd_bwd()
        return {}
    except Exception:  # noqa: BLE001 - out of shared memory etc.: isolate the culprits
        errors = {}
        for kind, opt in tiles.items():
            chunked.TILES.update(base)
            chunked.TILES[kind] = opt
            try:
                fwd_bwd()
            except Exception as e:  # noqa: BLE001
                errors[kind] = f"{type(e).__name__}: {str(e)[:120]}"
        return errors
    finally:
        chunked.TILES.update(base)


def _override(specs: list[str]):
    """Swap in the kernels of patched module files (experiments on the kernels themselves)."""
    from flagen.codegen.cache import import_path
    from flagen.runtime.op import get_op
    for spec in specs:
        variant, path = spec.split("=")
        get_op(variant).module.KERNELS.update(import_path(path, f"override_{variant}").KERNELS)


def _warm(job):
    """Worker, one round per process: compile it (small T, same specialisations as the timed
    shapes) and run it once. Returns (op, round, error): a round whose kernels fault (Triton 3.6
    miscompiles some tiles on Hopper, chunked.TILES) leaves its CUDA context unusable, so it
    gets a process of its own and the timing process never runs it."""
    name, B, H, D, kinds, r, overrides, candidates, chunk_size, path = job
    for spec in candidates:  # spawned: the parent's --candidates again
        kind, opts = spec.split("=")
        CANDIDATES[kind] = [tuple(int(x) for x in o.split(",")) for o in opts.split("/")]
    import torch
    from flagen.runtime import chunked
    try:
        _override(overrides)
        base = dict(chunked.TILES)
        fwd_bwd = _setup(name, B, 1024, H, D, chunk_size)
        _run_round(fwd_bwd, _round(kinds, r, base, path), base, chunked)
        torch.cuda.synchronize()
        return name, r, None
    except Exception as e:  # noqa: BLE001 - a fault: report it, the process ends with the task
        return name, r, f"{type(e).__name__}: {str(e)[:120]}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", default="chunk_retention,chunk_simple_gla")
    p.add_argument("--shapes", default="2,16384,16,128;4,2048,16,128")
    p.add_argument("--kinds", default="h,dh,o,dv,dqk")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--path", default=None, choices=["key", "scalar", "none"],
                   help="tune the decay path's own TILES entries (e.g. h:key) instead of the shared ones")
    p.add_argument("--override", action="append", default=[],
                   help="VARIANT=PATH: take that variant's kernels from another module file (a patched copy)")
    p.add_argument("--candidates", action="append", default=[],
                   help="KIND=BK,BV,W,S/BK,BV,W,S...: replace a kind's candidate list")
    args = p.parse_args()
    for spec in args.candidates:
        kind, opts = spec.split("=")
        CANDIDATES[kind] = [tuple(int(x) for x in o.split(",")) for o in opts.split("/")]
    kinds = args.kinds.split(",")
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
    n_rounds = max(len(CANDIDATES[k]) for k in kinds)

    from flagen.runtime import chunked
    base = dict(chunked.TILES)
    # compile every round in parallel (one batch size per op: only T differs, and T = 1024
    # keeps the same divisibility specialisations as the timed T)
    _override(args.override)
    jobs = [(name, shapes[0][0], shapes[0][2], shapes[0][3], kinds, r, args.override, args.candidates,
             args.chunk_size, args.path) for name in args.ops.split(",") for r in range(n_rounds)]
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        faults = {(name, r): err for name, r, err in pool.map(_warm, jobs, chunksize=1) if err}
    for (name, r), err in sorted(faults.items()):
        print(f"round {r} of {name} faulted in its worker, not timed: {err}", flush=True)

    import torch
    results = []
    for name in args.ops.split(","):
        for B, T, H, D in shapes:
            fwd_bwd = _setup(name, B, T, H, D, args.chunk_size)
            for r in range(n_rounds):
                tiles = _round(kinds, r, base, args.path)
                if (name, r) in faults:
                    results += [dict(op=name, shape=f"B{B}_T{T}_H{H}_D{D}", kind=e.split(":")[0], tiles=list(o),
                                     error="round faulted: " + faults[name, r]) for e, o in tiles.items()]
                    continue
                errors = _run_round(fwd_bwd, tiles, base, chunked)
                chunked.TILES.update(tiles)
                good = {k: v for k, v in tiles.items() if k not in errors}
                chunked.TILES.update(base)
                chunked.TILES.update(good)
                torch.cuda.synchronize()
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.reps):
                        fwd_bwd()
                    torch.cuda.synchronize()
                chunked.TILES.update(base)
                times = {e.key: e.device_time_total / e.count / 1000 for e in prof.key_averages() if e.count}
                for entry, opt in tiles.items():
                    kind = entry.split(":")[0]
                    if r >= len(CANDIDATES[kind]):
                        continue
                    row = dict(op=name, shape=f"B{B}_T{T}_H{H}_D{D}", kind=kind, tiles=list(opt))
                    if entry in errors:
                        row["error"] = errors[entry]
                    else:
                        key = [k for k in times if k.endswith(KERNEL[kind])]
                        row["ms"] = times[key[0]] if key else None
                    results.append(row)
            for kind in kinds:
                rows = sorted((x for x in results if x["op"] == name and x["shape"] == f"B{B}_T{T}_H{H}_D{D}"
                               and x["kind"] == kind and x.get("ms")), key=lambda x: x["ms"])
                default = base.get(_entry(kind, args.path), base[kind])
                cur = next((x["ms"] for x in rows if tuple(x["tiles"]) == tuple(default)
                            or tuple(x["tiles"]) == tuple(default) + (3,)), None)
                print(f"== {name} B{B}_T{T}_H{H}_D{D} {KERNEL[kind]} (default {default}: {cur})")
                for x in rows[:6]:
                    print(f"   {tuple(x['tiles'])}: {x['ms']:.4f} ms")
                print("   failed:", [tuple(x["tiles"]) for x in results if x.get("error") and x["kind"] == kind
                                     and x["op"] == name][:8], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(base=base, results=results), f, indent=1)


if __name__ == "__main__":
    main()
