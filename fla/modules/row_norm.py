"""The Triton path of the norms over the last dim: RMSNorm, LayerNorm and GroupNorm, with a
residual added first (and handed on with ``prenorm``), and an optional gate, swish or sigmoid,
after the norm (FLA's fused norm-gate) or swish before it (Mamba2's ``RMSNormGated``).

x [..., D] is M rows of G groups of N = D / G channels; group g of row i is the N values at
(i G + g) N, normalised on their own, with weight[g N : (g + 1) N]. A program owns one group and
tiles of BM rows: the forward keeps each row's mean and 1 / std (fp32), the backward recomputes
the rest and sums the weight's and bias's gradients over its rows into one partial row, which
PyTorch sums over programs. Computed in fp32 whatever the inputs' dtypes.

The PyTorch formulas in layernorm.py are the reference (tests/test_modules.py checks both);
they run where Triton cannot (CPU tensors, rows wider than MAX_N).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flagen.runtime.intmath import cdiv, next_power_of_2

GATES = {None: 0, "swish": 1, "silu": 1, "sigmoid": 2}
MAX_N = 16384  # channels per group that one program holds in registers
# (a tile's rows x channels, at least one row; and per warp) for the forward and the backward
# kernels, apart: benchmarks/tune_modules.py sweeps each
LAUNCH = {"fwd": (2048, 512), "bwd": (2048, 512)}


@triton.jit
def _gate(z, GATE: tl.constexpr):
    if GATE == 1:
        return z * tl.sigmoid(z)
    else:
        return tl.sigmoid(z)


@triton.jit
def _gate_grad(z, GATE: tl.constexpr):
    s = tl.sigmoid(z)
    if GATE == 1:
        return s * (1 + z * (1 - s))
    else:
        return s * (1 - s)


@triton.jit
def row_norm_fwd_kernel(
    x, res, z, w, b, y, res_out, mean, rstd, eps, M, TILES,
    N: tl.constexpr, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IS_RMS: tl.constexpr,
    HAS_RES: tl.constexpr, STORE_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, GATE: tl.constexpr,
    GATE_FIRST: tl.constexpr,
):
    """y (and res_out, mean, rstd) of group i_g of TILES tiles of BM rows."""
    i_p, i_g = tl.program_id(0), tl.program_id(1)
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    if HAS_W:
        b_w = tl.load(w + i_g * N + o_n, mask=m_n, other=0).to(tl.float32)
    if HAS_B:
        b_b = tl.load(b + i_g * N + o_n, mask=m_n, other=0).to(tl.float32)
    for i_m in range(i_p * TILES, i_p * TILES + TILES):
        o_m = (i_m * BM + tl.arange(0, BM)).to(tl.int64)
        m_m = o_m < M
        o_r = o_m * G + i_g  # (row, group) slots of mean and rstd
        o_x = o_r[:, None] * N + o_n[None, :]
        m_x = m_m[:, None] & m_n[None, :]
        b_s = tl.load(x + o_x, mask=m_x, other=0).to(tl.float32)
        if HAS_RES:
            b_s += tl.load(res + o_x, mask=m_x, other=0).to(tl.float32)
        if STORE_RES:
            tl.store(res_out + o_x, b_s.to(res_out.dtype.element_ty), mask=m_x)
        if GATE_FIRST:
            b_s = b_s * _gate(tl.load(z + o_x, mask=m_x, other=0).to(tl.float32), GATE)
        if IS_RMS:
            b_c = b_s
        else:
            b_mean = tl.sum(b_s, 1) / N
            tl.store(mean + o_r, b_mean, mask=m_m)
            b_c = tl.where(m_x, b_s - b_mean[:, None], 0.0)
        b_rstd = 1 / tl.sqrt(tl.sum(b_c * b_c, 1) / N + eps)
        tl.store(rstd + o_r, b_rstd, mask=m_m)
        b_y = b_c * b_rstd[:, None]
        if HAS_W:
            b_y = b_y * b_w[None, :]
        if HAS_B:
            b_y = b_y + b_b[None, :]
        if GATE != 0 and not GATE_FIRST:
            b_y = b_y * _gate(tl.load(z + o_x, mask=m_x, other=0).to(tl.float32), GATE)
        tl.store(y + o_x, b_y.to(y.dtype.element_ty), mask=m_x)


@triton.jit
def row_norm_bwd_kernel(
    x, res, z, w, b, mean, rstd, dy, dres_out, dx, dres, dz, dw, db, M, TILES,
    N: tl.constexpr, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IS_RMS: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_DRES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, GATE: tl.constexpr,
    GATE_FIRST: tl.constexpr,
):
    """dx (and dres, dz) of group i_g of TILES tiles of BM rows; dw, db [programs, D]: this
    program's sums over its rows."""
    i_p, i_g = tl.program_id(0), tl.program_id(1)
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    if HAS_W:
        b_w = tl.load(w + i_g * N + o_n, mask=m_n, other=0).to(tl.float32)
    if HAS_B:
        b_b = tl.load(b + i_g * N + o_n, mask=m_n, other=0).to(tl.float32)
    b_dw = tl.zeros([BN], dtype=tl.float32)
    b_db = tl.zeros([BN], dtype=tl.float32)
    for i_m in range(i_p * TILES, i_p * TILES + TILES):
        o_m = (i_m * BM + tl.arange(0, BM)).to(tl.int64)
        m_m = o_m < M
        o_r = o_m * G + i_g
        o_x = o_r[:, None] * N + o_n[None, :]
        m_x = m_m[:, None] & m_n[None, :]
        b_s = tl.load(x + o_x, mask=m_x, other=0).to(tl.float32)
        if HAS_RES:
            b_s += tl.load(res + o_x, mask=m_x, other=0).to(tl.float32)
        if GATE != 0:
            b_z = tl.load(z + o_x, mask=m_x, other=0).to(tl.float32)
        if GATE_FIRST:
            b_s0 = b_s
            b_s = b_s * _gate(b_z, GATE)
        b_rstd = tl.load(rstd + o_r, mask=m_m, other=0)
        if IS_RMS:
            b_xh = b_s * b_rstd[:, None]
        else:
            b_xh = tl.where(m_x, (b_s - tl.load(mean + o_r, mask=m_m, other=0)[:, None]) * b_rstd[:, None], 0.0)
        b_dy = tl.load(dy + o_x, mask=m_x, other=0).to(tl.float32)
        if GATE != 0 and not GATE_FIRST:
            b_y = b_xh
            if HAS_W:
                b_y = b_y * b_w[None, :]
            if HAS_B:
                b_y = b_y + b_b[None, :]
            tl.store(dz + o_x, (b_dy * b_y * _gate_grad(b_z, GATE)).to(dz.dtype.element_ty), mask=m_x)
            b_dy = b_dy * _gate(b_z, GATE)
        b_dw += tl.sum(b_dy * b_xh, 0)
        b_db += tl.sum(b_dy, 0)
        b_dxh = b_dy * b_w[None, :] if HAS_W else b_dy
        b_c1 = tl.sum(b_dxh * b_xh, 1) / N
        if IS_RMS:
            b_ds = (b_dxh - b_xh * b_c1[:, None]) * b_rstd[:, None]
        else:
            b_ds = (b_dxh - b_xh * b_c1[:, None] - (tl.sum(b_dxh, 1) / N)[:, None]) * b_rstd[:, None]
        if GATE_FIRST:
            tl.store(dz + o_x, (b_ds * b_s0 * _gate_grad(b_z, GATE)).to(dz.dtype.element_ty), mask=m_x)
            b_ds = b_ds * _gate(b_z, GATE)
        if HAS_DRES:
            b_ds += tl.load(dres_out + o_x, mask=m_x, other=0).to(tl.float32)
        tl.store(dx + o_x, b_ds.to(dx.dtype.element_ty), mask=m_x)
        if HAS_RES:
            tl.store(dres + o_x, b_ds.to(dres.dtype.element_ty), mask=m_x)
    if HAS_W:
        tl.store(dw + i_p * (G * N) + i_g * N + o_n, b_dw, mask=m_n)
    if HAS_B:
        tl.store(db + i_p * (G * N) + i_g * N + o_n, b_db, mask=m_n)


def _launch(M, G, N, device, backward):
    """(programs along the rows, tiles of BM rows per program, launch options): the forward a
    tile per program, the backward about 4 programs per SM (each sums dw over its rows)."""
    BN = next_power_of_2(N)
    tile_elems, warp_elems = LAUNCH["bwd" if backward else "fwd"]
    BM = max(1, min(16, tile_elems // BN))
    tiles = cdiv(M, BM)
    if backward:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
        programs = max(1, min(tiles, cdiv(4 * sms, G)))
    else:
        programs = tiles
    return programs, cdiv(tiles, programs), dict(BM=BM, BN=BN, num_warps=min(max(BM * BN // warp_elems, 1), 16))


class RowNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, z, residual, weight, bias, eps, is_rms, groups, gate, gate_first, prenorm, residual_in_fp32):
        D = x.shape[-1]
        N, G = D // groups, groups
        x2 = x.reshape(-1, D).contiguous()
        M = x2.shape[0]
        z2 = z.reshape(-1, D).contiguous() if z is not None else None
        r2 = residual.reshape(-1, D).contiguous() if residual is not None else None
        y = torch.empty_like(x2)
        res_out = None
        if prenorm:
            res_out = torch.empty(M, D, device=x.device, dtype=torch.float32 if residual_in_fp32 else x.dtype)
        mean = torch.empty(M * G, device=x.device, dtype=torch.float32) if not is_rms else None
        rstd = torch.empty(M * G, device=x.device, dtype=torch.float32)
        programs, tiles, opts = _launch(M, G, N, x.device, False)
        row_norm_fwd_kernel[(programs, G)](
            x2, r2, z2, weight, bias, y, res_out, mean, rstd, eps, M, tiles, N=N, G=G, IS_RMS=is_rms,
            HAS_RES=r2 is not None, STORE_RES=prenorm, HAS_W=weight is not None, HAS_B=bias is not None,
            GATE=GATES[gate], GATE_FIRST=gate_first, **opts)
        ctx.save_for_backward(x2, z2, r2, weight, bias, mean, rstd)
        ctx.options = eps, is_rms, groups, gate, gate_first, residual is not None and residual.dtype, x.shape
        y = y.reshape(x.shape)
        return (y, res_out.reshape(x.shape)) if prenorm else y

    @staticmethod
    def backward(ctx, dy, dres_out=None):
        x2, z2, r2, weight, bias, mean, rstd = ctx.saved_tensors
        eps, is_rms, groups, gate, gate_first, res_dtype, shape = ctx.options
        M, D = x2.shape
        N, G = D // groups, groups
        programs, tiles, opts = _launch(M, G, N, x2.device, True)
        dy2 = dy.reshape(M, D).contiguous()
        dr2 = dres_out.reshape(M, D).contiguous() if dres_out is not None else None
        dx = torch.empty_like(x2)
        dres = torch.empty(M, D, device=x2.device, dtype=res_dtype) if r2 is not None else None
        dz = torch.empty_like(z2) if z2 is not None else None
        dw = torch.empty(programs, D, device=x2.device, dtype=torch.float32) if weight is not None else None
        db = torch.empty(programs, D, device=x2.device, dtype=torch.float32) if bias is not None else None
        row_norm_bwd_kernel[(programs, G)](
            x2, r2, z2, weight, bias, mean, rstd, dy2, dr2, dx, dres, dz, dw, db, M, tiles, N=N, G=G,
            IS_RMS=is_rms, HAS_RES=r2 is not None, HAS_DRES=dr2 is not None, HAS_W=weight is not None,
            HAS_B=bias is not None, GATE=GATES[gate], GATE_FIRST=gate_first, **opts)
        return (dx.reshape(shape), dz.reshape(shape) if dz is not None else None,
                dres.reshape(shape) if dres is not None else None,
                dw.sum(0).to(weight.dtype) if dw is not None else None,
                db.sum(0).to(bias.dtype) if db is not None else None, *([None] * 7))


def check_args(x, weight=None, bias=None, z=None, residual=None) -> None:
    """A norm's tensors against x [..., D] (both paths: PyTorch would broadcast some silently)."""
    D = x.shape[-1]
    for name, t in (("z", z), ("residual", residual)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"`{name}` must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (D,):
            raise ValueError(f"`{name}` must be [{D}] (x's last dim), got {list(t.shape)}")


def usable(x, groups=1) -> bool:
    """Whether the Triton path runs for x: a CUDA tensor (the interpreter's CPU tensors only
    through ``row_norm`` itself, as the tests call it), at most MAX_N channels per group; not
    while torch.compile traces (it compiles the PyTorch path)."""
    return (x.is_cuda and x.shape[-1] // groups <= MAX_N and x.numel() > 0
            and not torch.compiler.is_compiling())


def row_norm(x, weight, bias, eps=1e-5, is_rms_norm=False, num_groups=1, z=None, gate=None, gate_first=False,
             residual=None, prenorm=False, residual_in_fp32=False):
    """The norm of x [..., D] (+ residual) over num_groups groups of its last dim, times weight
    [D] plus bias [D] (either None), then times gate(z) (or z gates the input first with
    ``gate_first``); y in x's dtype, and with ``prenorm`` also x + residual (fp32 with
    ``residual_in_fp32``, else x's dtype)."""
    if gate not in GATES:
        raise ValueError(f"`gate` must be one of {sorted(map(str, GATES))}, got {gate!r}")
    if (z is None) != (gate is None):
        raise ValueError("`z` and `gate` go together")
    check_args(x, weight, bias, z, residual)
    return RowNorm.apply(x, z, residual, weight, bias, eps, is_rms_norm, num_groups, gate, gate_first, prenorm,
                         residual_in_fp32)
