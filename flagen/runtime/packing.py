"""What a packed batch's ``cu_seqlens`` gives the host, read and derived once: its offsets (one
device-to-host read per tensor, a sync) and the index tensors built from the sequence lengths
(chunk slots, checkpoint offsets; one host-to-device copy per lengths and layout). A model's
layers share one packed batch, so a forward reads ``cu_seqlens`` back once, not once per layer,
and no call copies indices to the GPU again."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

MAX_ENTRIES = 64  # (packed batches and index layouts kept; the oldest goes first)
_lock = threading.Lock()
_offsets: OrderedDict = OrderedDict()  # id(cu) -> (weakref to cu, its version, offsets tuple)
_indices: OrderedDict = OrderedDict()  # key -> index tensors


def host_offsets(cu: torch.Tensor) -> tuple[int, ...]:
    """``cu``'s values on the host: read once per tensor and version (an in-place change reads
    them again; a new tensor is a new entry even at a freed one's address)."""
    try:
        version = cu._version
    except RuntimeError:  # (inference-mode tensors count no versions: read every time)
        return _read(cu)
    with _lock:
        hit = _offsets.get(id(cu))
        if hit is not None and hit[0]() is cu and hit[1] == version:
            _offsets.move_to_end(id(cu))
            return hit[2]
    values = _read(cu)
    with _lock:
        _offsets[id(cu)] = (weakref.ref(cu), version, values)
        while len(_offsets) > MAX_ENTRIES:
            _offsets.popitem(last=False)
    return values


def _read(cu: torch.Tensor) -> tuple[int, ...]:
    return tuple(cu.tolist())  # (the device sync)


def device_indices(key: tuple, build):
    """``build()``'s index tensors for ``key`` (lengths, layout, device), built once and kept:
    the kernels only read them. While a CUDA graph is captured they are built afresh and not
    kept (the graph's own memory; a kept tensor could be dropped while a graph still reads it)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return build()
    with _lock:
        hit = _indices.get(key)
        if hit is not None:
            _indices.move_to_end(key)
            return hit
    value = build()
    with _lock:
        _indices[key] = value
        while len(_indices) > MAX_ENTRIES:
            _indices.popitem(last=False)
    return value
