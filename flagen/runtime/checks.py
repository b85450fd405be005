"""Argument checks shared by every op: bad input raises a clear error naming the argument,
before any kernel runs."""

from __future__ import annotations

import math
import numbers

import torch

from flagen.runtime import packing

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def tensor(name: str, x, ndim: int | None = None, device: torch.device | None = None,
           dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"`{name}` has dtype {x.dtype}; expected one of {', '.join(map(str, dtypes))}")
    if device is not None and x.device != device:
        raise ValueError(f"`{name}` is on {x.device} but q is on {device}")
    return x


def shape(name: str, x: torch.Tensor, expected: tuple, what: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"`{name}` must have shape {what} = {tuple(expected)}, got {tuple(x.shape)}")


def scale_value(scale, K: int) -> float:
    if scale is None:
        return K ** -0.5
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError("`scale` must be a number")
        scale = scale.item()
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"`scale` must be a finite number, got {scale!r}")
    return float(scale)


def integer(x) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def positive_int(name: str, x) -> int:
    if not integer(x):
        raise TypeError(f"`{name}` must be a positive int, got {x!r}")
    x = int(x)
    if x < 1:
        raise ValueError(f"`{name}` must be a positive int, got {x}")
    return x


def state_slots(slots: list[int], S: int) -> None:
    """Decode's state slots: each below S (negative ones skip their sequence), none twice."""
    past = sorted({i for i in slots if i >= S})
    if past:
        raise ValueError(f"`state_indices` holds slot(s) {past[:8]} past the state's {S} slots (0..{S - 1}); "
                         "a negative slot skips its sequence")
    live = [i for i in slots if i >= 0]
    if len(set(live)) != len(live):
        twice = sorted({i for i in live if live.count(i) > 1})
        raise ValueError(f"`state_indices` repeats slot(s) {twice[:8]}: two sequences would update one state")


def cu_seqlens(cu: torch.Tensor | None, B: int, T: int, device: torch.device) -> tuple[int, ...] | None:
    """Validate ``cu_seqlens`` and return its offsets on the host (None without it; read back
    once per tensor: flagen.runtime.packing)."""
    if cu is None:
        return None
    tensor("cu_seqlens", cu, ndim=1, device=device, dtypes=(torch.int32, torch.int64))
    if B != 1:
        raise ValueError(f"`cu_seqlens` packs sequences along T, so the batch size must be 1, got B={B}")
    if cu.numel() < 2:
        raise ValueError("`cu_seqlens` must hold at least two offsets [0, ..., T]")
    values = packing.host_offsets(cu)
    if values[0] != 0:
        raise ValueError(f"`cu_seqlens` must start at 0, got {values[0]}")
    if values[-1] != T:
        raise ValueError(f"`cu_seqlens` must end at the packed length T={T}, got {values[-1]}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError("`cu_seqlens` must be non-decreasing (sorted offsets)")
    return values
