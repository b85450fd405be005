"""RWKV's token shift: each token's difference to the one before it in its sequence."""

from __future__ import annotations

import torch


def token_shift(x, cu_seqlens=None, cache=None):
    """x_(t-1) - x_t for x [B, T, D] (or packed [1, L, D] with ``cu_seqlens`` [N + 1]); before a
    sequence's first token comes ``cache`` [N, D] (the previous call's last token), or 0."""
    B, T, D = x.shape
    prev = torch.zeros_like(x)
    if cu_seqlens is None:
        prev[:, 1:] = x[:, :-1]
        if cache is not None and T:
            prev[:, 0] = cache.to(x.dtype)
        return prev - x
    starts = cu_seqlens[:-1].long()
    prev[:, 1:] = x[:, :-1]
    nonempty = cu_seqlens[1:] > cu_seqlens[:-1]
    first = starts[nonempty]
    prev[0, first] = cache.to(x.dtype)[nonempty] if cache is not None else 0
    return prev - x


def last_tokens(x, cu_seqlens=None, cache=None):
    """Each sequence's last token [N, D] (the next call's token-shift cache); an empty sequence
    keeps ``cache`` (or 0)."""
    if cu_seqlens is None:
        return x[:, -1] if x.shape[1] else cache
    ends = cu_seqlens[1:].long() - 1
    nonempty = cu_seqlens[1:] > cu_seqlens[:-1]
    out = x[0, ends.clamp_min(0)]
    keep = cache.to(x.dtype) if cache is not None else torch.zeros_like(out)
    return torch.where(nonempty[:, None], out, keep)
