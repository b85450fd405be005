"""Calling a generated module's chunked delta-rule kernels (chunk_delta.py.j2): layout, launches, autograd.

Forward: ``chunk_delta_wy`` (every chunk's WY factors T = (I + A)^-1, w, u and the readout's
pairs P, in parallel), ``chunk_delta_fwd_h`` (the states at every chunk start and every
token's residual v_new, one program per sequence and V tile walking its chunks), then
``chunk_delta_fwd_o`` (every chunk's output in parallel). Backward: the factors, states and
residuals are recomputed, then ``chunk_delta_bwd_dh`` (the end states' and the residuals'
gradients, walking back), ``chunk_delta_bwd_dw`` (the products with the states, over V) and
``chunk_delta_bwd_wy`` (through the factors and the inverse: dq, dk, dv and every gate, beta
and parameter gradient), both in parallel over chunks.
"""

from __future__ import annotations

import torch

from flagen.runtime import checks
from flagen.runtime.chunked import Chunks, entry_tiles, no_double_backward, per_query_head, run_launches
from flagen.runtime.gradients import raw_gradients
from flagen.runtime.intmath import cdiv, next_power_of_2

CHUNK_SIZES = (16, 32, 64)
DEFAULT_CHUNK_SIZE = 64
# No tile below 32: Triton 3.6 miscompiles small-N matmuls on Hopper.
MIN_TILE = 32
# each kernel's chunked.TILES entry (BK cap, BV cap, num_warps, num_stages)
TILE_ENTRY = {"wy": "delta_wy", "fwd_h": "delta_h", "fwd_o": "delta_o", "bwd_dh": "delta_dh", "bwd_dw": "delta_dw",
              "bwd_wy": "delta_dwy"}
STATE_KERNELS = ("fwd_h", "bwd_dh")


def _tile(n: int, cap: int) -> int:
    return max(MIN_TILE, min(cap, next_power_of_2(n)))


# The precision of each kernel's products (wy_dot's DOT) by the inputs' dtype and the kernel's
# role: the factors and the forward's state walk feed every later state (fp32 states stay
# within 1e-3 of float64 at any length only with about fp32 products: tf32x3, or bf16x3 for
# bf16 inputs); the output takes one product with operands rounded as the inputs were (an
# error of 2^-9 there is the inputs' own); the backward tf32x3 for bf16 inputs (one bf16
# product put the gate gradient 3x past the bf16 tolerance on the H200 with beta near 2 and
# nearly parallel keys: benchmarks/results/delta_h200.md, "Session 8"), one tf32 for fp16.
DOT_PRECISION = {torch.float32: dict(exact="tf32x3", output="tf32x3", backward="tf32x3"),
                 torch.float16: dict(exact="tf32x3", output="tf32", backward="tf32"),
                 torch.bfloat16: dict(exact="bf16x3", output="bf16", backward="tf32x3")}
ROLE = {"wy": "exact", "fwd_h": "exact", "fwd_o": "output", "bwd_dh": "backward", "bwd_dw": "backward",
        "bwd_wy": "backward"}
# The per-key and low-rank paths (KDA, DPLR, RWKV7) keep tf32x3 for every product: on the H200
# (Triton 3.6, 2026-12-03) the table above with 8-warp, 2-stage state walks gave KDA outputs off
# by 2 at strong decays and illegal addresses in DPLR; which of the two did it is not known yet
# (benchmarks/results/delta_h200.md, "Session 8").
KEY_PATH_PRECISION = "tf32x3"


def launch_config(kind: str, K: int, V: int, BT: int, dtype: torch.dtype = torch.float32, decay: str = "none",
                  variant: str | None = None) -> dict:
    """Tiles and launch options of kernel ``chunk_delta_<kind>`` for head dims K, V and chunk
    size BT, from chunked.TILES (overridable with FLAGEN_CHUNK_TILES, swept by
    `flagen tune`; tests/compile_offline.py checks every one fits the GPU's shared
    memory), and the products' precision for inputs of ``dtype`` (v's: q and k are fp32 once
    L2-normalised); an entry "<kind>:<decay>" is that decay path's own, "<variant>/..." the
    variant's (chunked.entry_tiles). The kernels that
    walk a sequence hold a whole [K, BV] state (BK covers K, with at least 8 warps from
    K = 256, whatever the entry says) and pipeline one stage past K = 128 or in fp32."""
    entry = TILE_ENTRY[kind]
    bk, bv, warps, *stages = entry_tiles(entry, decay, variant)  # (an override may leave stages out)
    stages = stages[0] if stages else 3
    if kind in STATE_KERNELS:
        BK = _tile(K, max(bk, checks.MAX_HEAD_DIM))
        warps = max(warps, 8) if BK >= 256 else warps
        if BK > 128 or dtype == torch.float32:
            stages = 1  # two overflow shared memory (K = 100 in fp32: 232 KiB; a block has 227)
    else:
        BK = _tile(K, bk)
        if kind == "bwd_wy" and decay == "key" and dtype == torch.float32:
            stages = 1  # three overflow shared memory with the low-rank form (DPLR, K = 128: 256 KiB; KDA alike)
    dot = KEY_PATH_PRECISION if decay == "key" else DOT_PRECISION[dtype][ROLE[kind]]
    return dict(BK=BK, BV=_tile(V, bv), DOT=dot, num_warps=warps, num_stages=stages)


def readout_dtype(K: int, V: int, BT: int, dtype: torch.dtype, decay: str, variant: str | None) -> torch.dtype:
    """The dtype the forward stores what only chunk_delta_fwd_o reads (P, the chunk states h,
    v_new): bf16 where its products round them to bf16 anyway (the same output, half the
    traffic), fp32 otherwise. The backward recomputes them in fp32."""
    bf16 = launch_config("fwd_o", K, V, BT, dtype, decay, variant)["DOT"] == "bf16"
    return torch.bfloat16 if bf16 else torch.float32


def _wy(op, q, k, v, inputs, chunks, meta, backward=False):
    """chunk_delta_wy's outputs (Tm, P [B*T, HV, BT], w [B*T, HV, K], u [B*T, HV, V], low) in
    fp32, ``low`` the low-rank form's P_k and A_ak [B*T, HV, BT] ({} without it), and its
    launches (none without chunks). Tm only for the ``backward`` (None in the forward, whose
    P may be bf16: readout_dtype)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    f32 = dict(dtype=torch.float32, device=q.device)
    Tm = torch.empty(B * T, HV, chunks.BT, **f32) if backward else None
    P = torch.empty(B * T, HV, chunks.BT, device=q.device, dtype=torch.float32 if backward else
                    readout_dtype(K, V, chunks.BT, v.dtype, op.module.DECAY, op.name))
    w = torch.empty(B * T, HV, K, **f32)
    u = torch.empty(B * T, HV, V, **f32)
    low = dict(Pk=torch.empty(B * T, HV, chunks.BT, **f32), Aak=torch.empty(B * T, HV, chunks.BT, **f32)) \
        if op.module.LOW_RANK else {}
    launches = [(
        op.module.KERNELS["chunk_delta_wy"], chunks.grid,
        (q, k, v, *inputs, Tm, P, *low.values(), w, u, meta["cu"], chunks.indices, T),
        dict(H=H, HV=HV, K=K, V=V, BT=chunks.BT, IS_VARLEN=meta["cu"] is not None, STORE_T=backward,
             **launch_config("wy", K, V, chunks.BT, v.dtype, op.module.DECAY, op.name)),
    )] if chunks.NC else []
    return (Tm, P, w, u, low), launches


def _states(op, q, k, v, inputs, w, u, h0, chunks, meta, store_ht, backward=False):
    """chunk_delta_fwd_h's outputs (h [NC, HV, K, V], v_new [B*T, HV, V], final state or None),
    fp32 (the final state always; h and v_new in the forward in readout_dtype), and its launch."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    f32 = dict(dtype=torch.float32, device=q.device)
    kept = dict(device=q.device, dtype=torch.float32 if backward else
                readout_dtype(K, V, chunks.BT, v.dtype, op.module.DECAY, op.name))
    h = torch.empty(chunks.NC, HV, K, V, **kept)
    v_new = torch.empty(B * T, HV, V, **kept)
    ht = torch.empty(meta["N"], HV, K, V, **f32) if store_ht else None
    config = launch_config("fwd_h", K, V, chunks.BT, v.dtype, op.module.DECAY, op.name)
    launch = (op.module.KERNELS["chunk_delta_fwd_h"], (cdiv(V, config["BV"]), meta["N"] * HV),
              (q, k, v, *inputs, w, u, h, v_new, h0, ht, meta["cu"], chunks.offsets, T),
              dict(H=H, HV=HV, K=K, V=V, BT=chunks.BT, IS_VARLEN=meta["cu"] is not None,
                   USE_H0=h0 is not None, STORE_HT=store_ht, **config))
    return (h, v_new, ht), [launch]


def chunk_size_of(chunk_size: int | None) -> int:
    if chunk_size is not None and chunk_size not in CHUNK_SIZES:
        raise ValueError(f"`chunk_size` must be one of {CHUNK_SIZES} (or None) for the delta rule, got {chunk_size!r}")
    return chunk_size or DEFAULT_CHUNK_SIZE


class _ChunkedDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, meta, q, k, v, h0, z0, *raw):
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        BT = chunk_size_of(meta["chunk_size"])
        chunks = Chunks.of(meta["lens"], meta["cu"] is not None, B, T, HV, BT, q.device)
        inputs = op.kernel_inputs(raw, meta)
        (Tm, P, w, u, low), launches = _wy(op, q, k, v, inputs, chunks, meta)
        (h, v_new, ht), walk = _states(op, q, k, v, inputs, w, u, h0, chunks, meta, meta["output_final_state"])
        launches += walk
        o = torch.empty_like(v)
        if chunks.NC:
            config = launch_config("fwd_o", K, V, BT, v.dtype, op.module.DECAY, op.name)
            launches.append((
                op.module.KERNELS["chunk_delta_fwd_o"], (*chunks.grid, cdiv(V, config["BV"])),
                (q, k, v, *inputs, h, P, *([low["Pk"]] if low else []), v_new, o, meta["cu"], chunks.indices,
                 meta["scale"], T),
                dict(H=H, HV=HV, K=K, V=V, BT=BT, IS_VARLEN=meta["cu"] is not None, **config),
            ))
        run_launches(launches, "forward")
        if meta["needs_grad"]:
            ctx.save_for_backward(q, k, v, h0, *raw)
            ctx.op, ctx.meta, ctx.chunks = op, meta, chunks
        return o, ht, None

    @staticmethod
    def backward(ctx, do, dht, dzt):
        no_double_backward()
        op, meta, chunks = ctx.op, ctx.meta, ctx.chunks
        kern = op.module.KERNELS
        q, k, v, h0, *raw = ctx.saved_tensors
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        N, NT, NC, BT, G = meta["N"], B * T, chunks.NC, chunks.BT, HV // H
        cu, varlen = meta["cu"], meta["cu"] is not None
        inputs = op.kernel_inputs(raw, meta)
        do = do.contiguous()
        f32 = dict(dtype=torch.float32, device=q.device)

        (Tm, P, w, u, low), launches = _wy(op, q, k, v, inputs, chunks, meta, backward=True)
        (h, v_new, _), walk = _states(op, q, k, v, inputs, w, u, h0, chunks, meta, False, backward=True)
        launches += walk
        # the low-rank form's v shares through the end states, and products with dS_end
        dvk = torch.empty_like(v_new) if low else None
        dh = torch.empty_like(h)
        dv_new = torch.empty_like(v_new)
        dh0 = torch.empty(N, HV, K, V, **f32) if h0 is not None else None
        config = launch_config("bwd_dh", K, V, BT, v.dtype, op.module.DECAY, op.name)
        launches.append((
            kern["chunk_delta_bwd_dh"], (cdiv(V, config["BV"]), N * HV),
            (q, k, v, *inputs, w, P, do, dh, dv_new, *([dvk] if low else []),
             dht.contiguous() if dht is not None else None, dh0, cu, chunks.offsets, meta["scale"], T),
            dict(H=H, HV=HV, K=K, V=V, BT=BT, IS_VARLEN=varlen, USE_DHT=dht is not None,
                 STORE_DH0=dh0 is not None, **config),
        ))

        kinds = dict(op.module.INPUTS)
        layout = {"token": (NT, HV), "token_key": (NT, HV, K), "head": (NC, HV), "head_key": (NC, HV, K)}
        grads = {name: torch.empty(layout[kinds[name]], **f32) for name in op.module.GRADS}
        # with grouped value heads, dq and dk are per state head first, then summed per group
        dq = torch.empty(NT, HV, K, dtype=q.dtype if G == 1 else torch.float32, device=q.device)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        if NC:
            config = launch_config("bwd_dw", K, V, BT, v.dtype, op.module.DECAY, op.name)
            dqs, dw, dbc = (torch.empty(NT, HV, K, **f32) for _ in range(3))
            sdh = torch.empty(NC, HV, K, **f32)
            dkc = torch.empty_like(dqs) if low else None
            launches.append((
                kern["chunk_delta_bwd_dw"], (*chunks.grid, cdiv(K, config["BK"])),
                (h, dh, do, *([v] if low else []), v_new, dv_new, dqs, dw, dbc, *([dkc] if low else []), sdh, cu,
                 chunks.indices, meta["scale"], T),
                dict(H=H, HV=HV, K=K, V=V, BT=BT, IS_VARLEN=varlen, **config),
            ))
            launches.append((
                kern["chunk_delta_bwd_wy"], chunks.grid,
                (q, k, v, *inputs, Tm, P, *low.values(), *([dvk, dkc] if low else []), v_new, dv_new, do, dqs, dw,
                 dbc, sdh, dq, dk, dv, *grads.values(), cu, chunks.indices, meta["scale"], T),
                dict(H=H, HV=HV, K=K, V=V, BT=BT, IS_VARLEN=varlen,
                     **launch_config("bwd_wy", K, V, BT, v.dtype, op.module.DECAY, op.name)),
            ))
        run_launches(launches, "backward")
        if not NC:  # no tokens at all
            dv.zero_(), dq.zero_(), dk.zero_()
            for g in grads.values():
                g.zero_()
        dq, dk = per_query_head(dq, q), per_query_head(dk, k)
        raw_grads = raw_gradients(op, raw, grads, {"token": (), "token_key": (), "head": (0,), "head_key": (0,)})
        dh0 = dh0.to(h0.dtype) if dh0 is not None else None
        return (None, None, dq, dk, dv, dh0, None, *raw_grads)
