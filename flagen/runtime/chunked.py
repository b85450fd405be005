"""Calling a generated module's chunked kernels: layout of chunks, tiles, launches, autograd.

Forward: ``chunk_fwd_h`` (the state at every chunk start, one program per sequence and
state tile walking its chunks), then ``chunk_fwd_o`` (every chunk's output in parallel).
Backward: ``chunk_fwd_h`` again (states are recomputed, not stored), ``chunk_bwd_dh`` (the
state gradients, walking backwards), ``chunk_bwd_dv`` and ``chunk_bwd_dqk`` (in parallel
over chunks; the latter also gives every gate and parameter gradient). On the per-key decay
path, ``chunk_fwd_o``, ``chunk_bwd_dv`` and ``chunk_bwd_dqk`` each have an exact pass over the
chunks whose decays are too strong for the fast one (``_launch_passes``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import warnings
from dataclasses import dataclass

import torch
import triton.language as tl
from triton.runtime.errors import OutOfResources

from flagen.runtime import packing
from flagen.runtime.gradients import raw_gradients
from flagen.runtime.intmath import cdiv, next_power_of_2
from flagen.runtime.normalizer import divisor_gradients

# Tiles and launch options per kernel, as (BK cap, BV cap, num_warps[, num_stages]); head
# dims round up to powers of two below the caps. An entry "<kind>:<decay>" overrides "<kind>"
# for that decay path. These are the defaults: a GPU's tuning table (`flagen tune`,
# flagen.runtime.tuning) replaces entries on first use, and FLAGEN_CHUNK_TILES=
# "dqk=128,64,8;o:key=64,64,4,2" overrides both.
#
# Triton 3.6 miscompiles some of these kernels on Hopper (wrong outputs or illegal addresses,
# bisected with tests/diagnose_chunk.py on an H100): chunk_fwd_o/chunk_bwd_dv with 4 warps and
# BV <= 32 on the scalar and no-decay paths, with 8 warps on the per-key path; chunk_bwd_dqk
# with a software-pipelined V loop. The entries below avoid every failing combination found,
# and `tiles` replaces them whatever an entry says (_avoid_miscompiles);
# tests/test_chunk_gpu.py sweeps head dims so that a compiler change cannot slip one through.
# Among the rest, the entries are the fastest that the tile sweep (now `flagen tune`) found on
# an H100 for H16, D128 at B2_T16384 and B4_T2048 (benchmarks/results/chunk_h100.md); the
# per-key path's (":key") were tuned again on an H200 after its exact pass was split off
# (`--path key`, benchmarks/results/hardening_h200.md): its fast kernels carry
# fewer registers, and chunk_fwd_o/chunk_bwd_dv take a whole 128-wide V tile in 4 warps.
TILES = {
    "h": (64, 64, 4, 3),     # chunk_fwd_h: a [BK, BV] state tile per program
    "h:key": (32, 128, 4, 3),
    "dh": (64, 64, 4, 3),    # chunk_bwd_dh: a [BK, BV] state-gradient tile per program
    "dh:key": (32, 128, 4, 3),
    "o": (64, 128, 8, 3),    # chunk_fwd_o: loops over K, a V tile per program
    "o:key": (64, 128, 4, 1),
    "dv": (64, 128, 8, 3),   # chunk_bwd_dv: loops over K, a V tile per program
    "dv:key": (64, 128, 4, 1),
    "dqk": (64, 64, 4, 1),   # chunk_bwd_dqk: loops over V (twice), a K tile per program
    "dqk:key": (32, 32, 4, 1),
    # the chunked delta rule's kernels (chunk_delta.py.j2, chunked_delta.launch_config): the WY
    # factors, the output, the states' products and the backward through the factors; and the
    # state walks (a whole [K, BV] state: the BK cap is the largest K, 8 warps from K = 256),
    # 8 warps there. Timed on the H200 at B2_T16384_H16_D128 in bf16
    # (benchmarks/results/delta_h200.md): 8 warps halve the per-thread registers of the state
    # walks and of chunk_delta_bwd_wy, whose [BT, BT] blocks spilled in 4. Two pipeline stages
    # in the forward's walk (chunked_delta.launch_config keeps one where they would not fit);
    # the backward's overflows shared memory in two with the low-rank form. chunk_delta_bwd_wy
    # with BK = 32, 8 warps and bf16 products on the scalar path faults on Hopper (Triton 3.6)
    "delta_wy": (64, 64, 4, 3),
    "delta_o": (64, 64, 4, 3),
    "delta_dw": (64, 64, 4, 3),
    "delta_dwy": (64, 64, 8, 1),
    "delta_h": (256, 32, 8, 2),
    "delta_dh": (256, 32, 8, 1),
    # the per-key and low-rank paths keep one stage and 4 warps (chunked_delta.KEY_PATH_PRECISION)
    "delta_dwy:key": (64, 64, 4, 3),
    "delta_h:key": (256, 32, 4, 1),
    "delta_dh:key": (256, 32, 4, 1),
}
DEFAULT_TILES = dict(TILES)
# entries set in the environment (they win over a GPU's tuning table, flagen.runtime.tuning)
ENV_TILES = {}
for _entry in filter(None, os.environ.get("FLAGEN_CHUNK_TILES", "").split(";")):
    _kind, _values = _entry.split("=")
    ENV_TILES[_kind.strip()] = tuple(int(x) for x in _values.split(","))
TILES.update(ENV_TILES)
SUB_CHUNK = 16  # BC: rows per sub-chunk on the per-key decay path (bounds every exponent)
FLAG_BLOCK = 256  # FB: flags an exact-pass program scans at once (_launch_passes)


def chunk_sizes(module, chunk_size: int | None) -> tuple[int, int]:
    """(forward chunk size, backward chunk size).

    By default the forward takes chunks of 128 tokens on the scalar and no-decay paths (half
    the states of 64-token chunks to write and read back: on the H100 at B2_T16384_H16_D128,
    chunk_fwd_h 0.23 ms instead of 0.29 for chunk_fwd_o 0.28 either way) and 64 on the
    per-key path (its sub-chunks bound the exponents) and with the exclusive readout; the
    backward's four kernels are fastest with 64. A given ``chunk_size`` is used by both passes
    (the results do not depend on it beyond rounding)."""
    fwd = 128 if module.DECAY != "key" and not module.BONUS else 64
    return chunk_size or fwd, chunk_size or 64


def _tile(n: int, cap: int) -> int:
    return max(16, min(cap, next_power_of_2(n)))


def entry_tiles(entry: str, decay: str, variant: str | None = None) -> tuple[int, ...]:
    """TILES' launch options for ``entry`` on decay path ``decay``: a tuning table's own for
    ``variant`` ("<variant>/<entry>[:<decay>]", from a table made for that variant: it changes
    no other variant's), else the decay path's ("<entry>:<decay>"), else the entry's.
    An entry that FLAGEN_CHUNK_TILES sets (for the decay path or all) ignores the variant's
    table: the environment overrides every table."""
    keys = (f"{entry}:{decay}", entry)  # the most specific first
    if variant is not None and not any(key in ENV_TILES for key in keys):
        for key in keys:
            if f"{variant}/{key}" in TILES:
                return TILES[f"{variant}/{key}"]
    return TILES.get(keys[0], TILES[entry])


def tiles(kind: str, K: int, V: int, decay: str, itemsize: int = 2, variant: str | None = None) -> tuple[int, int, dict]:
    """(BK, BV, launch options) of kernel ``kind`` of ``variant`` on decay path ``decay`` for
    head dims K, V and inputs of ``itemsize`` bytes. fp32 inputs take at most 2 pipeline stages:
    3 stages of fp32 q and k tiles of 128 tokens need 240 KB of shared memory, past Hopper's
    227 KB."""
    bk, bv, warps, *stages = entry_tiles(kind, decay, variant)
    if stages and itemsize > 2:
        stages = [min(stages[0], 2)]
    BK, BV = _tile(K, bk), _tile(V, bv)
    warps, stages = _avoid_miscompiles(kind, decay, BV, warps, stages)
    return BK, BV, dict(num_warps=warps, **({"num_stages": stages[0]} if stages else {}))


def _avoid_miscompiles(kind: str, decay: str, BV: int, warps: int, stages: list) -> tuple[int, list]:
    """The launch options Triton 3.6 miscompiles on Hopper (the note above TILES; the H200 found
    them again in `flagen tune`'s unchecked sweep of 2026-12-03: wrong dv and dq that ran
    fastest), replaced whatever a tuning table or FLAGEN_CHUNK_TILES asks: chunk_fwd_o and
    chunk_bwd_dv take 8 warps when a V tile is 32 wide or less on the scalar and no-decay paths
    and at most 4 on the per-key path; chunk_bwd_dqk's V loop is never pipelined."""
    if kind in ("o", "dv"):
        warps = min(warps, 4) if decay == "key" else max(warps, 8) if BV <= 32 else warps
    if kind == "dqk":
        stages = [1]
    return warps, stages


def dot_dtype(dtype: torch.dtype):
    """Matmul operands and stored chunk states: bf16 for bf16 inputs; fp32 otherwise (fp16
    cannot hold a state or a sub-chunk's worth of decay)."""
    return (tl.bfloat16, torch.bfloat16) if dtype == torch.bfloat16 else (tl.float32, torch.float32)


def no_double_backward() -> None:
    """The kernels' backward is not itself differentiable: refuse ``create_graph=True`` rather
    than return second derivatives that silently miss its terms."""
    if torch.is_grad_enabled():
        raise RuntimeError("double backward (create_graph=True) through flagen's kernels is not supported")


def per_query_head(dx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A gradient of q or k [B, T, H, K] from the per-state-head one [B*T, HV, K] the kernels
    write: summed over each group of HV // H value heads, in x's dtype."""
    B, T, H, K = x.shape
    G = dx.shape[1] // H
    return dx.view(B, T, H, G, K).sum(3).to(x.dtype) if G > 1 else dx.view(B, T, H, K)


@dataclass
class Chunks:
    """Where every chunk lives. Fixed length: chunk i_t of sequence n is slot n * NT + i_t and
    the grid is (NT, B * HV). Packed varlen: slots run over the sequences' chunks in order,
    ``indices`` [NC, 2] gives (sequence, chunk in sequence) per slot, ``offsets`` [N + 1]
    each sequence's first slot, and the grid is (NC, HV)."""

    BT: int
    NC: int
    grid: tuple[int, int]
    indices: torch.Tensor | None
    offsets: torch.Tensor | None

    @staticmethod
    def of(lens, varlen: bool, B: int, T: int, HV: int, BT: int, device) -> "Chunks":
        if not varlen:
            NT = cdiv(T, BT)
            return Chunks(BT, B * NT, (NT, B * HV), None, None)

        def build():
            counts = torch.tensor([cdiv(n, BT) for n in lens], dtype=torch.int64)
            offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            NC = int(offsets[-1])
            seq = torch.repeat_interleave(torch.arange(len(lens)), counts)
            within = torch.arange(NC) - offsets[:-1].repeat_interleave(counts)
            indices = torch.stack([seq, within], 1).to(torch.int32)
            return NC, indices.to(device), offsets.to(torch.int32).to(device)
        NC, indices, offsets = packing.device_indices(("chunks", tuple(lens), BT, str(device)), build)
        return Chunks(BT, NC, (NC, HV), indices, offsets)


def _sub_chunk(op) -> dict:
    return {"BC": SUB_CHUNK} if op.module.DECAY == "key" else {}


def _strong_flags(op, chunks, HV, device):
    """The per-key path's flags of the chunks that take the exact pass (_launch_passes)."""
    return torch.empty(chunks.NC, HV, dtype=torch.int8, device=device) if op.module.DECAY == "key" else None


def _launch_passes(kern, launches, strong, first=(), phase="forward") -> None:
    """Launch chunk-parallel kernels, each as (kind, grid, args, kwargs), in order, after the
    launches ``first`` (kernel, grid, args, kwargs). On the per-key path (``strong`` [NC, HV]
    int8 given) each is two passes: the fast one over ``grid``, then the exact one over the
    chunks flagged in ``strong`` by the fast pass of chunk_fwd_o or chunk_bwd_dv (_chunk.j2's
    launchers), on a persistent grid of at most two programs per SM."""
    extra = {} if strong is None else dict(strong=strong)
    sequence = list(first)
    if strong is not None:
        programs = cdiv(strong.numel(), FLAG_BLOCK)
        if strong.is_cuda:
            programs = min(programs, 2 * _sm_count(strong.device))
    for kind, grid, args, kwargs in launches:
        sequence.append((kern[kind], grid, args, {**kwargs, **extra}))
        if strong is not None:
            sequence.append((kern[f"{kind}_exact"], (max(programs, 1),), (*args, strong, strong.numel()),
                             dict(FB=FLAG_BLOCK, **kwargs)))
    run_launches(sequence, phase)


def run_launches(launches, phase: str) -> None:
    """Launch the kernels, each (kernel, grid, args, kwargs), in order. The first time a
    ``phase`` ("forward", "backward": their specialisations differ) runs, every kernel after the
    first compiles meanwhile in a thread (compile_ahead; Triton's compiler releases the GIL):
    a first call waits for its slowest compile, not for their sum."""
    launches = [(kernel, grid, args, _stages(kernel, kwargs)) for kernel, grid, args, kwargs in launches]
    pending = [None] + [compile_ahead(*launch, key=(launch[0], phase)) for launch in launches[1:]]
    for (kernel, grid, args, kwargs), ready in zip(launches, pending):
        if ready is not None:
            try:
                ready.result()
            except OutOfResources:
                pass  # the launch meets it again, and falls back (_launch)
        _launch(kernel, grid, args, kwargs)


# (kernel, launch options but tensors) whose pipelined build needs more shared memory than the GPU has
_ONE_STAGE: set = set()


def _stage_key(kernel, kwargs) -> tuple:
    return kernel, tuple(sorted((k, v) for k, v in kwargs.items() if not isinstance(v, torch.Tensor)))


def _stages(kernel, kwargs) -> dict:
    """kwargs, with num_stages=1 where this kernel's pipelined build did not fit before (_launch);
    no work on the hot path until one did not."""
    if _ONE_STAGE and _stage_key(kernel, kwargs) in _ONE_STAGE:
        return {**kwargs, "num_stages": 1}
    return kwargs


def _launch(kernel, grid, args, kwargs) -> None:
    """kernel[grid](*args, **kwargs), in one pipeline stage where the tiles' stages need more
    shared memory than this GPU's blocks may have (the tables assume an H100/H200's 227 KiB;
    fp32 operands double a stage): Triton says so when it loads the kernel, and the launch
    is repeated with num_stages=1, said once per kernel and remembered (_stages)."""
    try:
        kernel[grid](*args, **kwargs)
    except OutOfResources as error:
        if kwargs.get("num_stages", 3) == 1:
            raise
        _ONE_STAGE.add(_stage_key(kernel, kwargs))
        warnings.warn(f"flagen: {getattr(kernel, '__name__', kernel)} needs more shared memory than this GPU has "
                      f"with num_stages={kwargs.get('num_stages', 3)} ({error}); it runs in one stage", stacklevel=3)
        kernel[grid](*args, **{**kwargs, "num_stages": 1})


@functools.cache
def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


_compiled_ahead: set = set()


def compile_ahead(kernel, grid, args, kwargs, key=None):
    """Compile ``kernel`` for these arguments in a thread, the first time ``key`` (default: the
    kernel) comes: a future, or None (compiled ahead before, or the interpreter). One set
    lookup per call on the hot path; a later specialisation (other head dims or dtypes)
    compiles at its launch."""
    key = kernel if key is None else key
    if key in _compiled_ahead or os.environ.get("TRITON_INTERPRET") == "1" or not args[0].is_cuda:
        return None
    _compiled_ahead.add(key)
    device = args[0].device

    def compile_():
        with torch.cuda.device(device):
            kernel.warmup(*args, grid=grid, **kwargs)
    return _compile_pool().submit(compile_)


@functools.cache
def _compile_pool():
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="flagen-compile")


def _states(op, meta, q, k, v, h0, z0, inputs, chunks, BT, DT, hdtype, store_ht):
    """chunk_fwd_h's outputs (h, final state, z, final z), the states at every chunk start and
    the final state, with the normaliser also the sums of keys z at every chunk start (else
    None), and its launch (kernel, grid, args, kwargs)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = meta["N"]
    BK, BV, W = tiles("h", K, V, op.module.DECAY, k.element_size(), op.name)
    h = q.new_empty(chunks.NC, HV, K, V, dtype=hdtype)
    ht = q.new_empty(N, HV, K, V, dtype=torch.float32) if store_ht else None
    z = zt = None
    norm = {}
    if op.module.NORMALIZE:
        z = q.new_empty(chunks.NC, HV, K, dtype=torch.float32)
        zt = q.new_empty(N, HV, K, dtype=torch.float32)  # written whatever store_ht (chunk_fwd_h)
        norm = dict(z=z, z0=z0, zt=zt, USE_Z0=z0 is not None)
    launch = (op.module.KERNELS["chunk_fwd_h"], (cdiv(K, BK) * cdiv(V, BV), N * HV),
              (k, v, *inputs, h, h0, ht, meta["cu"], chunks.offsets, T),
              dict(**norm, H=H, HV=HV, K=K, V=V, BT=BT, BK=BK, BV=BV, DT=DT,
                   USE_H0=h0 is not None, STORE_HT=store_ht, IS_VARLEN=meta["cu"] is not None, **W))
    return (h, ht, z, (zt if store_ht else None)), launch


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, meta, q, k, v, h0, z0, *raw):
        kern = op.module.KERNELS
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        BT, _ = chunk_sizes(op.module, meta["chunk_size"])
        DT, hdtype = dot_dtype(q.dtype)
        chunks = Chunks.of(meta["lens"], meta["cu"] is not None, B, T, HV, BT, q.device)
        inputs = op.kernel_inputs(raw, meta)
        (h, ht, z, zt), walk = _states(op, meta, q, k, v, h0, z0, inputs, chunks, BT, DT, hdtype,
                                       meta["output_final_state"])
        o = torch.empty_like(v)
        # with the normaliser, every token's divisor (for the backward)
        den = torch.empty(B, T, HV, dtype=torch.float32, device=q.device) if z is not None else None
        if chunks.NC:
            strong = _strong_flags(op, chunks, HV, q.device)
            BK, BV, W = tiles("o", K, V, op.module.DECAY, q.element_size(), op.name)
            _launch_passes(kern, [(
                "chunk_fwd_o", (*chunks.grid, cdiv(V, BV)),
                (q, k, v, *inputs, h, o, meta["cu"], chunks.indices, meta["scale"], T),
                dict(**(dict(z=z, den=den) if z is not None else {}),
                     H=H, HV=HV, K=K, V=V, BT=BT, BK=BK, BV=BV, DT=DT, IS_VARLEN=meta["cu"] is not None,
                     **W, **_sub_chunk(op)),
            )], strong, first=[walk])
        else:
            run_launches([walk], "forward")
        if meta["needs_grad"]:
            ctx.save_for_backward(q, k, v, h0, z0, o if den is not None else None, den, *raw)
            ctx.op, ctx.meta, ctx.chunks = op, meta, chunks
        return o, ht, zt

    @staticmethod
    def backward(ctx, do, dht, dzt):
        no_double_backward()
        op, meta = ctx.op, ctx.meta
        kern = op.module.KERNELS
        q, k, v, h0, z0, o, den, *raw = ctx.saved_tensors
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        BT = chunk_sizes(op.module, meta["chunk_size"])[1]
        DT, hdtype = dot_dtype(q.dtype)
        cu, varlen = meta["cu"], meta["cu"] is not None
        # the forward's chunk layout when both passes use the same chunk size (no host work again)
        chunks = ctx.chunks if ctx.chunks.BT == BT else Chunks.of(meta["lens"], varlen, B, T, HV, BT, q.device)
        N, NT, NC, G = meta["N"], B * T, chunks.NC, HV // H
        inputs = op.kernel_inputs(raw, meta)
        do = do.contiguous()
        f32 = dict(dtype=torch.float32, device=q.device)

        (h, _, z, _), walk = _states(op, meta, q, k, v, h0, z0, inputs, chunks, BT, DT, hdtype, False)
        dh = torch.empty_like(h)
        dh0 = torch.empty(N, HV, K, V, **f32) if h0 is not None else None
        dz0, norm_dh, norm_dqk = None, {}, {}
        if z is not None:  # the normaliser: gradients of the undivided output and of the divisors
            do, w = divisor_gradients(op.module, do, o, den, meta["scale"])
            dz = torch.empty_like(z)
            dz0 = torch.empty(N, HV, K, **f32)  # written whether or not z0 was given (chunk_bwd_dh)
            norm_dh = dict(w=w, dz=dz, dzt=dzt.contiguous() if dzt is not None else None, dz0=dz0,
                           USE_DZT=dzt is not None)
            norm_dqk = dict(w=w, z=z, dz=dz)
        BK, BV, W = tiles("dh", K, V, op.module.DECAY, q.element_size(), op.name)
        walks = [walk, (kern["chunk_bwd_dh"], (cdiv(K, BK) * cdiv(V, BV), N * HV),
                        (q, do, *inputs, dh, dht.contiguous() if dht is not None else None, dh0, cu, chunks.offsets,
                         meta["scale"], T),
                        dict(**norm_dh, H=H, HV=HV, K=K, V=V, BT=BT, BK=BK, BV=BV, DT=DT,
                             USE_DHT=dht is not None, STORE_DH0=dh0 is not None, IS_VARLEN=varlen, **W))]

        dv = torch.empty_like(v)
        # with grouped value heads, dq and dk are per state head first, then summed per group
        dq = torch.empty(NT, HV, K, dtype=q.dtype if G == 1 else torch.float32, device=q.device)
        dk = torch.empty_like(dq)
        BKq, BVq, Wq = tiles("dqk", K, V, op.module.DECAY, q.element_size(), op.name)
        NK = cdiv(K, BKq)
        kinds = dict(op.module.INPUTS)
        layout = {"token": (NK, NT, HV), "token_key": (NT, HV, K), "head": (NK, NC, HV), "head_key": (NC, HV, K)}
        grads = {name: torch.empty(layout[kinds[name]], **f32) for name in op.module.GRADS}
        if NC:
            strong = _strong_flags(op, chunks, HV, q.device)  # chunk_bwd_dv flags, chunk_bwd_dqk reads
            BKv, BVv, Wv = tiles("dv", K, V, op.module.DECAY, q.element_size(), op.name)
            _launch_passes(kern, [(
                "chunk_bwd_dv", (*chunks.grid, cdiv(V, BVv)),
                (q, k, *inputs, do, dh, dv, cu, chunks.indices, meta["scale"], T),
                dict(H=H, HV=HV, K=K, V=V, BT=BT, BK=BKv, BV=BVv, DT=DT, IS_VARLEN=varlen, **Wv, **_sub_chunk(op)),
            ), (
                "chunk_bwd_dqk", (*chunks.grid, NK),
                (q, k, v, *inputs, h, do, dh, dq, dk, *grads.values(), cu, chunks.indices, meta["scale"], T, NT, NC),
                dict(**norm_dqk, H=H, HV=HV, K=K, V=V, BT=BT, BK=BKq, BV=BVq, DT=DT, IS_VARLEN=varlen, **Wq,
                     **_sub_chunk(op)),
            )], strong, first=walks, phase="backward")
        else:  # no tokens at all
            run_launches(walks, "backward")
            dv.zero_(), dq.zero_(), dk.zero_()
            for g in grads.values():
                g.zero_()
        dq, dk = per_query_head(dq, q), per_query_head(dk, k)

        # partial gradients per K tile (per-token scalars) and per chunk (per-head inputs)
        raw_grads = raw_gradients(op, raw, grads,
                                  {"token": (0,), "token_key": (), "head": (0, 1), "head_key": (0,)})
        dh0 = dh0.to(h0.dtype) if dh0 is not None else None
        dz0 = dz0.to(z0.dtype) if z0 is not None else None
        return (None, None, dq, dk, dv, dh0, dz0, *raw_grads)
