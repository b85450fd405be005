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

import warnings

import torch

from flagen.runtime.chunked import Chunks, no_double_backward, per_query_head
from flagen.runtime.gradients import raw_gradients
from flagen.runtime.intmath import cdiv, next_power_of_2

CHUNK_SIZES = (16, 32, 64)
DEFAULT_CHUNK_SIZE = 64
# Tiles: K and V tiles of the chunk-parallel kernels, and the V tile of the kernels that hold a
# whole [K, BV] state (BK covers K there). No tile below 32: Triton 3.6 miscompiles small-N
# matmuls on Hopper.
TILE = 64
STATE_TILE_V = 32
MIN_TILE = 32


def _tile(n: int, cap: int) -> int:
    return max(MIN_TILE, min(cap, next_power_of_2(n)))


def _state_tiles(K: int, V: int) -> tuple[int, int, dict]:
    """(BK, BV, launch options) of the kernels that walk a sequence: BK covers K."""
    BK = _tile(K, 1 << 30)
    return BK, _tile(V, STATE_TILE_V), dict(num_warps=8 if BK >= 256 else 4)


def _wy(op, q, k, v, inputs, chunks, meta):
    """Run chunk_delta_wy: (Tm, P [B*T, HV, BT], w [B*T, HV, K], u [B*T, HV, V], low) in fp32,
    ``low`` the low-rank form's P_k and A_ak [B*T, HV, BT] ({} without it)."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    f32 = dict(dtype=torch.float32, device=q.device)
    Tm = torch.empty(B * T, HV, chunks.BT, **f32)
    P = torch.empty_like(Tm)
    w = torch.empty(B * T, HV, K, **f32)
    u = torch.empty(B * T, HV, V, **f32)
    low = dict(Pk=torch.empty_like(Tm), Aak=torch.empty_like(Tm)) if op.module.LOW_RANK else {}
    if chunks.NC:
        op.module.KERNELS["chunk_delta_wy"][chunks.grid](
            q, k, v, *inputs, Tm, P, *low.values(), w, u, meta["cu"], chunks.indices, T,
            H=H, HV=HV, K=K, V=V, BT=chunks.BT, BK=_tile(K, TILE), BV=_tile(V, TILE),
            IS_VARLEN=meta["cu"] is not None, num_warps=4,
        )
    return Tm, P, w, u, low


def _states(op, q, k, v, inputs, w, u, h0, chunks, meta, store_ht):
    """Run chunk_delta_fwd_h: (h [NC, HV, K, V], v_new [B*T, HV, V], final state or None), fp32."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    f32 = dict(dtype=torch.float32, device=q.device)
    h = torch.empty(chunks.NC, HV, K, V, **f32)
    v_new = torch.empty(B * T, HV, V, **f32)
    ht = torch.empty(meta["N"], HV, K, V, **f32) if store_ht else None
    BK, BV, W = _state_tiles(K, V)
    op.module.KERNELS["chunk_delta_fwd_h"][(cdiv(V, BV), meta["N"] * HV)](
        q, k, v, *inputs, w, u, h, v_new, h0, ht, meta["cu"], chunks.offsets, T,
        H=H, HV=HV, K=K, V=V, BT=chunks.BT, BK=BK, BV=BV, IS_VARLEN=meta["cu"] is not None,
        USE_H0=h0 is not None, STORE_HT=store_ht, **W,
    )
    return h, v_new, ht


# These kernels are checked in Triton's interpreter (tests/test_chunk_ops.py) and compile for
# sm_90 with Triton 3.6 (tests/compile_offline.py), but tests/test_chunk_gpu.py has not yet run
# them on a GPU: until it has, a CUDA call says so once.
GPU_CHECKED = False
_warned = False


def _warn_unchecked(device) -> None:
    global _warned
    if device.type == "cuda" and not GPU_CHECKED and not _warned:
        _warned = True
        warnings.warn("flagen's chunked delta-rule kernels have not yet been checked on a GPU (they are checked "
                      "in Triton's interpreter and compile for sm_90): run `bash tests/run_gpu.sh -k "
                      "'delta or kda'` to check them on yours, or use the fused_recurrent_* ops", stacklevel=4)


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
        _warn_unchecked(q.device)
        chunks = Chunks.of(meta["lens"], meta["cu"] is not None, B, T, HV, BT, q.device)
        inputs = op.kernel_inputs(raw, meta)
        Tm, P, w, u, low = _wy(op, q, k, v, inputs, chunks, meta)
        h, v_new, ht = _states(op, q, k, v, inputs, w, u, h0, chunks, meta, meta["output_final_state"])
        o = torch.empty_like(v)
        if chunks.NC:
            BV = _tile(V, TILE)
            op.module.KERNELS["chunk_delta_fwd_o"][(*chunks.grid, cdiv(V, BV))](
                q, k, v, *inputs, h, P, *([low["Pk"]] if low else []), v_new, o, meta["cu"], chunks.indices,
                meta["scale"], T,
                H=H, HV=HV, K=K, V=V, BT=BT, BK=_tile(K, TILE), BV=BV, IS_VARLEN=meta["cu"] is not None,
                num_warps=4,
            )
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

        Tm, P, w, u, low = _wy(op, q, k, v, inputs, chunks, meta)
        h, v_new, _ = _states(op, q, k, v, inputs, w, u, h0, chunks, meta, False)
        # the low-rank form's v shares through the end states, and products with dS_end
        dvk = torch.empty_like(v_new) if low else None
        dh = torch.empty_like(h)
        dv_new = torch.empty_like(v_new)
        dh0 = torch.empty(N, HV, K, V, **f32) if h0 is not None else None
        BKs, BVs, Ws = _state_tiles(K, V)
        kern["chunk_delta_bwd_dh"][(cdiv(V, BVs), N * HV)](
            q, k, v, *inputs, w, P, do, dh, dv_new, *([dvk] if low else []),
            dht.contiguous() if dht is not None else None, dh0,
            cu, chunks.offsets, meta["scale"], T,
            H=H, HV=HV, K=K, V=V, BT=BT, BK=BKs, BV=BVs, IS_VARLEN=varlen,
            USE_DHT=dht is not None, STORE_DH0=dh0 is not None, **Ws,
        )

        kinds = dict(op.module.INPUTS)
        layout = {"token": (NT, HV), "token_key": (NT, HV, K), "head": (NC, HV), "head_key": (NC, HV, K)}
        grads = {name: torch.empty(layout[kinds[name]], **f32) for name in op.module.GRADS}
        # with grouped value heads, dq and dk are per state head first, then summed per group
        dq = torch.empty(NT, HV, K, dtype=q.dtype if G == 1 else torch.float32, device=q.device)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        if NC:
            BK, BV = _tile(K, TILE), _tile(V, TILE)
            dqs, dw, dbc = (torch.empty(NT, HV, K, **f32) for _ in range(3))
            sdh = torch.empty(NC, HV, K, **f32)
            dkc = torch.empty_like(dqs) if low else None
            kern["chunk_delta_bwd_dw"][(*chunks.grid, cdiv(K, BK))](
                h, dh, do, *([v] if low else []), v_new, dv_new, dqs, dw, dbc, *([dkc] if low else []), sdh, cu,
                chunks.indices, meta["scale"], T,
                H=H, HV=HV, K=K, V=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=varlen, num_warps=4,
            )
            kern["chunk_delta_bwd_wy"][chunks.grid](
                q, k, v, *inputs, Tm, P, *low.values(), *([dvk, dkc] if low else []), v_new, dv_new, do, dqs, dw,
                dbc, sdh, dq, dk, dv, *grads.values(),
                cu, chunks.indices, meta["scale"], T,
                H=H, HV=HV, K=K, V=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=varlen, num_warps=4,
            )
        else:  # no tokens at all
            dv.zero_(), dq.zero_(), dk.zero_()
            for g in grads.values():
                g.zero_()
        dq, dk = per_query_head(dq, q), per_query_head(dk, k)
        raw_grads = raw_gradients(op, raw, grads, {"token": (), "token_key": (), "head": (0,), "head_key": (0,)})
        dh0 = dh0.to(h0.dtype) if dh0 is not None else None
        return (None, None, dq, dk, dv, dh0, None, *raw_grads)
