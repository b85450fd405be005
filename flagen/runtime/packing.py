"""What a packed batch gives the host, read and derived once: ``cu_seqlens``' offsets (one
device-to-host read per tensor, a sync), a padding mask's packing (fla.layers.utils.unpad), and
the index tensors built from the sequence lengths (chunk slots, checkpoint offsets; one
host-to-device copy per lengths and layout). A model's layers share one packed batch or one
mask, so a forward reads it back once, not once per layer, and no call copies indices to the
GPU again. Entries are kept per tensor (its identity and version: an in-place change derives
again, a new tensor is a new entry even at a freed one's address), the newest MAX_ENTRIES."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

MAX_ENTRIES = 64
_lock = threading.Lock()
_per_tensor: OrderedDict = OrderedDict()  # (id(x), key) -> (weakref to x, its version, value)
_indices: OrderedDict = OrderedDict()  # key -> index tensors


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _keep(table: OrderedDict, key, value) -> None:
    with _lock:
        table[key] = value
        while len(table) > MAX_ENTRIES:
            table.popitem(last=False)


def per_tensor(x: torch.Tensor, key, build, device_tensors: bool = False):
    """``build()``, derived from ``x``, once per tensor and version and ``key``. Inference-mode
    tensors count no versions: built every time. With ``device_tensors`` (the value holds
    tensors that kernels read), nothing is kept or reused while a CUDA graph is captured (a
    kept tensor could be dropped while the graph still reads it)."""
    try:
        version = x._version
    except RuntimeError:
        return build()
    if device_tensors and _capturing():
        return build()
    entry = (id(x), key)
    with _lock:
        hit = _per_tensor.get(entry)
        if hit is not None and hit[0]() is x and hit[1] == version:
            _per_tensor.move_to_end(entry)
            return hit[2]
    value = build()
    _keep(_per_tensor, entry, (weakref.ref(x), version, value))
    return value


def host_offsets(cu: torch.Tensor) -> tuple[int, ...]:
    """``cu``'s values on the host, read once per tensor and version."""
    return per_tensor(cu, "offsets", lambda: _read(cu))


def _read(cu: torch.Tensor) -> tuple[int, ...]:
    return tuple(cu.tolist())  # (the device sync)


def device_indices(key: tuple, build):
    """``build()``'s index tensors for ``key`` (lengths, layout, device), built once and kept:
    the kernels only read them. Built afresh and not kept while a CUDA graph is captured."""
    if _capturing():
        return build()
    with _lock:
        hit = _indices.get(key)
        if hit is not None:
            _indices.move_to_end(key)
            return hit
    value = build()
    _keep(_indices, key, value)
    return value
