"""Rotary position embeddings (RoPE; XPos with ``scale_base``) with FLA 0.6.0's names,
arguments and buffers."""

from __future__ import annotations

import torch
import torch.nn as nn


def rotary_embedding(x, cos, sin, interleaved=False, seqlen_offsets=0, cu_seqlens=None):
    """Rotate the first R channels of each head of x [B, T, H, D] by the position tables cos, sin
    [TR, R / 2] at each token's position: t + seqlen_offsets (an int, or a tensor [B], or [N] with
    ``cu_seqlens``), counted from its own sequence's start with packed ``cu_seqlens`` [N + 1]
    (B = 1). Halves (GPT-NeoX) or, ``interleaved``, adjacent pairs (GPT-J). Returns x's shape
    and dtype."""
    B, T = x.shape[:2]
    R = 2 * cos.shape[-1]
    if R > x.shape[-1]:
        raise ValueError(f"the rotary dim ({R}) exceeds the head dim ({x.shape[-1]})")
    if isinstance(seqlen_offsets, int) and cu_seqlens is None:
        # one offset for all: a slice of the tables, checked without reading anything back
        if seqlen_offsets + T > cos.shape[0]:
            raise ValueError(f"position {seqlen_offsets + T - 1} is past the rotary tables ({cos.shape[0]} positions)")
        c, s = cos[seqlen_offsets:seqlen_offsets + T, None], sin[seqlen_offsets:seqlen_offsets + T, None]
    else:
        pos = torch.arange(T, device=x.device)
        offsets = torch.as_tensor(seqlen_offsets, device=x.device)
        if cu_seqlens is not None:
            seq = torch.searchsorted(cu_seqlens[1:].long(), pos, right=True)
            pos = (pos - cu_seqlens.long()[seq]) + (offsets[seq] if offsets.dim() else offsets)
            pos = pos[None].expand(B, T)
        else:
            pos = pos[None] + (offsets[:, None] if offsets.dim() else offsets)
            pos = pos.expand(B, T)
        if int(pos.max()) >= cos.shape[0]:
            raise ValueError(f"position {int(pos.max())} is past the rotary tables ({cos.shape[0]} positions)")
        c, s = cos[pos][:, :, None], sin[pos][:, :, None]  # [B, T, 1, R / 2]
    return _rotate(x, c, s, interleaved)


def _rotate(x, c, s, interleaved):
    """x [B, T, H, D] with its first R channels rotated by c, s [B or 1, T, 1, R / 2]."""
    R = 2 * c.shape[-1]
    c, s = c.float(), s.float()
    xr = x[..., :R].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)
    else:
        x1, x2 = xr.chunk(2, -1)
        out = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)
    out = out.to(x.dtype)
    return out if R == x.shape[-1] else torch.cat([out, x[..., R:]], -1)


class RotaryEmbedding(nn.Module):
    """RoPE over the first ``dim`` channels of each head (``interleaved``: adjacent pairs, else
    halves); with ``scale_base``, XPos (queries scaled up, keys down, centred on the middle of
    the position tables). Buffers ``inv_freq`` (and ``scale``) [dim / 2], not saved.

    forward(q [B, T, H, D], k [B, T, HK, D], seqlen_offset=0, cu_seqlens=None, max_seqlen=None)
    -> (q, k): positions t + seqlen_offset (an int, or per sequence a tensor [B] or [N] with packed
    ``cu_seqlens``); the tables cover ``max_seqlen`` positions, or T + seqlen_offset.
    ``at_positions(q, k, position_ids)`` takes each token's position from a tensor instead."""

    def __init__(self, dim: int, base: float = 10000.0, scale_base: float | None = None, interleaved: bool = False,
                 pos_idx_in_fp32: bool = True, device=None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the rotary `dim` must be even, got {dim}")
        self.dim, self.base, self.scale_base = dim, float(base), scale_base
        self.interleaved, self.pos_idx_in_fp32, self.device = interleaved, pos_idx_in_fp32, device
        self.register_buffer("inv_freq", self._inv_freq(device), persistent=False)
        self.register_buffer("scale", None if scale_base is None else self._scale(device), persistent=False)
        self._tables = None  # (key, tables) of the last call: rebuilt when the length, device or dtype change

    def _scale(self, device):
        return (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) + 0.4 * self.dim) / (1.4 * self.dim)

    def reset_parameters(self):
        """Recompute the (unsaved) buffers: models built on the meta device and loaded from a
        checkpoint (transformers' from_pretrained) have nothing in them otherwise."""
        self._tables = None
        with torch.no_grad():
            self.inv_freq.copy_(self._inv_freq(self.inv_freq.device))
            if self.scale is not None:
                self.scale.copy_(self._scale(self.scale.device))

    def _inv_freq(self, device):
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, base={self.base}, interleaved={self.interleaved}"
                + (f", scale_base={self.scale_base}" if self.scale_base is not None else ""))

    def tables(self, seqlen: int, device, dtype):
        """(cos, sin) for queries and (cos, sin) for keys, each [seqlen, dim / 2] in ``dtype``."""
        if self.pos_idx_in_fp32:
            t = torch.arange(seqlen, device=device, dtype=torch.float32)
            inv_freq = self.inv_freq if self.inv_freq.dtype == torch.float32 else self._inv_freq(device)
        else:  # positions in the buffer's dtype, as models trained that way saw them
            t = torch.arange(seqlen, device=device, dtype=self.inv_freq.dtype)
            inv_freq = self.inv_freq
        freqs = torch.outer(t, inv_freq.to(device)).float()
        cos, sin = torch.cos(freqs), torch.sin(freqs)
        if self.scale is None:
            return (cos.to(dtype), sin.to(dtype)), (cos.to(dtype), sin.to(dtype))
        power = (torch.arange(seqlen, device=device, dtype=torch.float32) - seqlen // 2) / self.scale_base
        scale = self.scale.to(device) ** power[:, None]
        return ((cos * scale).to(dtype), (sin * scale).to(dtype)), ((cos / scale).to(dtype), (sin / scale).to(dtype))

    def at_positions(self, q, k, position_ids):
        """(q, k) rotated at positions ``position_ids`` [B, T]: the angles computed at those
        positions, equal to the tables' rows, with nothing read back to the host (a CUDA graph's
        decoding step). Not with XPos, whose scale depends on the tables' length."""
        if position_ids.shape != q.shape[:2]:
            raise ValueError(f"`position_ids` must be [B, T] = {list(q.shape[:2])}, got {list(position_ids.shape)}")
        c, s = self._angles(position_ids, q.dtype)
        return _rotate(q, c, s, self.interleaved), _rotate(k, c, s, self.interleaved)

    def _angles(self, position_ids, dtype):
        """(cos, sin) [B, T, 1, dim / 2] in ``dtype`` at positions ``position_ids`` [B, T]."""
        if self.scale is not None:
            raise NotImplementedError("`position_ids` with XPos (`scale_base`): its scale depends on the tables' "
                                      "length; give `seqlen_offset`")
        if self.pos_idx_in_fp32:
            t = position_ids.to(torch.float32)
            inv_freq = self.inv_freq if self.inv_freq.dtype == torch.float32 else self._inv_freq(t.device)
        else:
            t, inv_freq = position_ids.to(self.inv_freq.dtype), self.inv_freq
        freqs = (t[..., None] * inv_freq.to(t.device)).float()
        return torch.cos(freqs).to(dtype)[:, :, None], torch.sin(freqs).to(dtype)[:, :, None]

    def forward(self, q, k, seqlen_offset=0, cu_seqlens=None, max_seqlen=None, chunk_indices=None):
        if max_seqlen is None:
            extra = seqlen_offset if isinstance(seqlen_offset, int) else int(torch.as_tensor(seqlen_offset).max())
            max_seqlen = q.shape[1] + extra
        if torch.compiler.is_compiling():  # the graph computes the tables (no cache keyed on storage)
            tables = self.tables(max_seqlen, q.device, q.dtype)
        else:
            key = (max_seqlen, q.device, q.dtype, self.inv_freq.data_ptr(), self.inv_freq._version)
            if self._tables is None or self._tables[0] != key:
                self._tables = key, self.tables(max_seqlen, q.device, q.dtype)
            tables = self._tables[1]
        (cq, sq), (ck, sk) = tables
        q = rotary_embedding(q, cq, sq, self.interleaved, seqlen_offset, cu_seqlens)
        k = rotary_embedding(k, ck, sk, self.interleaved, seqlen_offset, cu_seqlens)
        return q, k
