"""The Triton path of ``causal_conv1d`` (convolution.py): the short depthwise causal conv of
packed sequences, forward and backward.

x [L, D] holds the sequences one after another; token t belongs to the sequence that starts at
``bos[t]`` (index ``seq[t]``, ending before ``eos[t]``), index tensors derived once per
``cu_seqlens`` (flagen.runtime.packing), or, for a batch of equal lengths T, known to each
program (a grid axis per sequence): a fixed-length call launches nothing but its kernel. Inputs before a sequence's
start come from its cached state h0 [N, D, W] (the newest last), or are 0. A program owns BT
tokens and BD channels:

    pre[t] = sum_j w[:, j] x_in(t - W + 1 + j) + b,    y[t] = act(pre[t])

The backward first makes dpre = dy act'(pre) and each program's partial sums of dw [D, W] and
db [D] over its tokens (one kernel), then dx[s] = sum_j w[:, j] dpre[s + W - 1 - j] over the
later tokens of s's own sequence (a second kernel: those tokens may belong to the next
program). The PyTorch formula in convolution.py is the reference and the CPU path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagen.runtime import packing
from flagen.runtime.intmath import cdiv

BT, BD, WARPS = 64, 128, 4  # tokens and channels per program, and its warps


@triton.jit
def _tokens(bos, seq, eos, L, T, IS_VARLEN: tl.constexpr, BT: tl.constexpr):
    """(o_t, m_t, start, index, end) of this program's BT tokens, each [BT]: packed, a tile of
    the L tokens with its tokens' bounds read; of equal lengths T, a tile of sequence
    program_id(2) (no per-token division)."""
    if IS_VARLEN:
        o_t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
        m_t = o_t < L
        b_bos = tl.load(bos + o_t, mask=m_t, other=0).to(tl.int64)
        b_seq = tl.load(seq + o_t, mask=m_t, other=0).to(tl.int64)
        b_eos = tl.load(eos + o_t, mask=m_t, other=0).to(tl.int64)
    else:
        o_l = tl.program_id(0) * BT + tl.arange(0, BT)
        i_n = tl.program_id(2).to(tl.int64)
        o_t = i_n * T + o_l
        m_t = o_l < T
        b_seq = tl.zeros([BT], dtype=tl.int64) + i_n
        b_bos = b_seq * T
        b_eos = b_bos + T
    return o_t, m_t, b_bos, b_seq, b_eos


@triton.jit
def _conv_tile(x, h0, w, b, b_bos, b_seq, o_t, m_t, o_d, m_d, D, W: tl.constexpr, HAS_H0: tl.constexpr,
               HAS_B: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """pre [BT, BD] (fp32) of tokens o_t and channels o_d."""
    b_pre = tl.zeros([BT, BD], dtype=tl.float32)
    for j in tl.static_range(W):
        o_s = o_t - (W - 1) + j  # the input tap j reads
        m_s = m_t & (o_s >= b_bos)
        b_x = tl.load(x + o_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0).to(tl.float32)
        if HAS_H0:
            # before its sequence's start: column W - (bos - s) of the cached state
            m_h = m_t & (o_s < b_bos)
            b_x += tl.load(h0 + (b_seq[:, None] * D + o_d[None, :]) * W + (W - b_bos + o_s)[:, None],
                           mask=m_h[:, None] & m_d[None, :], other=0).to(tl.float32)
        b_w = tl.load(w + o_d * W + j, mask=m_d, other=0).to(tl.float32)
        b_pre += b_x * b_w[None, :]
    if HAS_B:
        b_pre += tl.load(b + o_d, mask=m_d, other=0).to(tl.float32)[None, :]
    return b_pre


@triton.jit
def causal_conv_fwd_kernel(x, h0, w, b, bos, seq, eos, y, L, T, D, W: tl.constexpr, HAS_H0: tl.constexpr,
                           HAS_B: tl.constexpr, ACT: tl.constexpr, IS_VARLEN: tl.constexpr, BT: tl.constexpr,
                           BD: tl.constexpr):
    o_t, m_t, b_bos, b_seq, _ = _tokens(bos, seq, eos, L, T, IS_VARLEN, BT)
    o_d = tl.program_id(1) * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_y = _conv_tile(x, h0, w, b, b_bos, b_seq, o_t, m_t, o_d, m_d, D, W, HAS_H0, HAS_B, BT, BD)
    if ACT:
        b_y = b_y * tl.sigmoid(b_y)
    tl.store(y + o_t[:, None] * D + o_d[None, :], b_y.to(y.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


@triton.jit
def causal_conv_bwd_dpre_kernel(x, h0, w, b, bos, seq, eos, dy, dpre, dw, db, L, T, D, W: tl.constexpr,
                                HAS_H0: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
                                IS_VARLEN: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """dpre [L, D] (fp32), and this program's sums dw [token tiles, D, W], db [.., D] (tile i_t of
    sequence i_n at i_n * tiles per sequence + i_t)."""
    i_t = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    o_t, m_t, b_bos, b_seq, _ = _tokens(bos, seq, eos, L, T, IS_VARLEN, BT)
    o_d = tl.program_id(1) * BD + tl.arange(0, BD)
    m_d = o_d < D
    m = m_t[:, None] & m_d[None, :]
    b_dp = tl.load(dy + o_t[:, None] * D + o_d[None, :], mask=m, other=0).to(tl.float32)
    if ACT:
        b_pre = _conv_tile(x, h0, w, b, b_bos, b_seq, o_t, m_t, o_d, m_d, D, W, HAS_H0, HAS_B, BT, BD)
        b_sig = tl.sigmoid(b_pre)
        b_dp = b_dp * b_sig * (1 + b_pre * (1 - b_sig))
    tl.store(dpre + o_t[:, None] * D + o_d[None, :], b_dp, mask=m)
    if HAS_B:
        tl.store(db + i_t * D + o_d, tl.sum(b_dp, 0), mask=m_d)
    for j in tl.static_range(W):
        o_s = o_t - (W - 1) + j
        m_s = m_t & (o_s >= b_bos)
        b_x = tl.load(x + o_s[:, None] * D + o_d[None, :], mask=m_s[:, None] & m_d[None, :], other=0).to(tl.float32)
        if HAS_H0:
            m_h = m_t & (o_s < b_bos)
            b_x += tl.load(h0 + (b_seq[:, None] * D + o_d[None, :]) * W + (W - b_bos + o_s)[:, None],
                           mask=m_h[:, None] & m_d[None, :], other=0).to(tl.float32)
        tl.store(dw + (i_t * D + o_d) * W + j, tl.sum(b_dp * b_x, 0), mask=m_d)


@triton.jit
def causal_conv_bwd_dx_kernel(dpre, w, bos, seq, eos, dx, L, T, D, W: tl.constexpr, IS_VARLEN: tl.constexpr,
                              BT: tl.constexpr, BD: tl.constexpr):
    """dx[s] = sum_j w[:, j] dpre[s + W - 1 - j], over the taps that stay in s's sequence
    (eos: one past its last token)."""
    o_t, m_t, _, _, b_eos = _tokens(bos, seq, eos, L, T, IS_VARLEN, BT)
    o_d = tl.program_id(1) * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_dx = tl.zeros([BT, BD], dtype=tl.float32)
    for j in tl.static_range(W):
        o_u = o_t + (W - 1) - j  # the output that reads s through tap j
        m_u = m_t & (o_u < b_eos)
        b_dp = tl.load(dpre + o_u[:, None] * D + o_d[None, :], mask=m_u[:, None] & m_d[None, :], other=0)
        b_dx += b_dp * tl.load(w + o_d * W + j, mask=m_d, other=0).to(tl.float32)[None, :]
    tl.store(dx + o_t[:, None] * D + o_d[None, :], b_dx.to(dx.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


def token_bounds(cu_seqlens, L, device, keep=True):
    """(bos, seq, eos) [L] int32 on ``device``: each token's sequence start, index and end (one
    past), from ``cu_seqlens`` [N + 1] (any integer dtype and device), derived once per
    tensor (a model's layers share it) unless ``keep`` is False (a tensor made for this call)."""
    def build():
        cu = cu_seqlens.to(device, torch.int64)
        lens = cu.diff()
        seq = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens, output_size=L)
        return cu[:-1][seq].to(torch.int32), seq.to(torch.int32), cu[1:][seq].to(torch.int32)
    return packing.per_tensor(cu_seqlens, ("conv_token_bounds", L, str(device)), build, device_tensors=True) \
        if keep else build()


def _grid(L, T, D, varlen):
    """Token tiles of the L packed tokens, or of each of the L / T sequences of T tokens."""
    return (cdiv(L, BT), cdiv(D, BD), 1) if varlen else (cdiv(T, BT), cdiv(D, BD), L // T)


class CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, bounds, T, activation):
        """x [L, D] packed: sequences with token bounds ``bounds`` (token_bounds), or of T tokens
        each (bounds None); weight [D, W], bias [D] or None, initial_state [N, D, W] or None."""
        L, D = x.shape
        W = weight.shape[-1]
        x, weight = x.contiguous(), weight.contiguous()
        h0 = initial_state.contiguous() if initial_state is not None else None
        varlen = bounds is not None
        bounds = bounds if varlen else (None, None, None)
        y = torch.empty_like(x)
        grid = _grid(L, T, D, varlen)
        causal_conv_fwd_kernel[grid](x, h0, weight, bias, *bounds, y, L, T, D, W=W, HAS_H0=h0 is not None,
                                     HAS_B=bias is not None, ACT=activation is not None,
                                     IS_VARLEN=varlen, BT=BT, BD=BD, num_warps=WARPS)
        ctx.save_for_backward(x, weight, bias, h0, *(b for b in bounds if b is not None))
        ctx.T, ctx.activation = T, activation
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, h0, *bounds = ctx.saved_tensors
        varlen = bool(bounds)
        bounds = bounds or (None, None, None)
        L, D = x.shape
        W = weight.shape[-1]
        grid = _grid(L, ctx.T, D, varlen)
        dpre = torch.empty(L, D, device=x.device, dtype=torch.float32)
        tiles = grid[0] * grid[2]
        dw = torch.empty(tiles, D, W, device=x.device, dtype=torch.float32)
        db = torch.empty(tiles, D, device=x.device, dtype=torch.float32) if bias is not None else None
        causal_conv_bwd_dpre_kernel[grid](x, h0, weight, bias, *bounds, dy.contiguous(), dpre, dw, db, L, ctx.T, D,
                                          W=W, HAS_H0=h0 is not None, HAS_B=bias is not None,
                                          ACT=ctx.activation is not None, IS_VARLEN=varlen, BT=BT, BD=BD,
                                          num_warps=WARPS)
        dx = torch.empty_like(x)
        causal_conv_bwd_dx_kernel[grid](dpre, weight, *bounds, dx, L, ctx.T, D, W=W, IS_VARLEN=varlen, BT=BT,
                                        BD=BD, num_warps=WARPS)
        return (dx, dw.sum(0).to(weight.dtype), db.sum(0).to(bias.dtype) if db is not None else None,
                None, None, None, None)


def usable(x, initial_state) -> bool:
    """Whether the Triton path runs: CUDA tensors, and no gradient wanted for the cached state
    (the PyTorch path gives it); not while torch.compile traces (it compiles the PyTorch path)."""
    return x.is_cuda and x.numel() > 0 and not torch.compiler.is_compiling() and not (
        initial_state is not None and initial_state.requires_grad and torch.is_grad_enabled())
