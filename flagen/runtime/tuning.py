"""Per-GPU tuning tables: the chunked kernels' launch options (chunked.TILES entries) chosen by
``flagen tune`` on one GPU model, looked up at run time, never autotuned.

A table is JSON, ``{"device": ..., "arch": ..., "versions": ..., "command": ..., "tiles":
{entry: [BK, BV, num_warps, num_stages]}, "timings": ...}``, named after the GPU
(``device_key``: ``nvidia-h200.json``) or its architecture (``sm90.json``, any GPU of it). The
built-ins' tables live beside their kernels (``generated/tuning/``, committed); a user's (made
with ``flagen tune --out``, or for a user variant) under the cache directory's ``tuning/``, and
take precedence. ``FLAGEN_CHUNK_TILES`` overrides both. A GPU with no table runs the defaults
in chunked.TILES and says once how to make one.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from pathlib import Path

import torch

from flagen.runtime import chunked

_UNSET = object()
_applied: object = _UNSET  # the table applied (a path, or None: none found), once per process
_lock = threading.Lock()


def device_key(device: torch.device) -> tuple[str, str]:
    """(name key, architecture key) of a CUDA device: ("nvidia-h200", "sm90")."""
    name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    major, minor = torch.cuda.get_device_capability(device)
    return name, f"sm{major}{minor}"


def table_dirs() -> list[Path]:
    """Where tables are looked for, first match wins: the user's, then the built-ins'."""
    from flagen.codegen import build, cache
    return [cache.cache_dir() / "tuning", build.generated_dir() / "tuning"]


def find_table(keys: tuple[str, ...]) -> Path | None:
    for folder in table_dirs():
        for key in keys:
            path = folder / f"{key}.json"
            if path.is_file():
                return path
    return None


def read_table(path: Path) -> dict[str, tuple[int, ...]]:
    """A table's TILES entries; a malformed table is an error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tiles = {str(k): tuple(int(x) for x in v) for k, v in data["tiles"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"flagen tuning table {path} is unreadable ({type(e).__name__}: {e}); "
                         "fix or delete it, or run `flagen tune` again") from e
    for entry, value in tiles.items():
        if entry.split(":")[0] not in chunked.DEFAULT_TILES or len(value) not in (3, 4):
            raise ValueError(f"flagen tuning table {path}: entry {entry!r} = {list(value)} is not a TILES "
                             "entry of 3 or 4 integers")
    return tiles


def apply(device: torch.device) -> str | None:
    """Apply the table of ``device`` (a CUDA device) to chunked.TILES, once per process: TILES
    are process-wide, so in a process that drives GPUs of two models the first one's table
    holds. Entries set by FLAGEN_CHUNK_TILES stay. Returns the table's path, or None (the
    defaults, with a one-line hint)."""
    global _applied
    if _applied is not _UNSET:
        return _applied
    with _lock:
        if _applied is not _UNSET:
            return _applied
        keys = device_key(device)
        path = find_table(keys)
        if path is None:
            warnings.warn(f"flagen: no tuning table for {torch.cuda.get_device_name(device)} ({keys[1]}): the "
                          "chunked kernels run default launch options; `flagen tune` makes one", stacklevel=3)
        else:
            for entry, value in read_table(path).items():
                if entry not in chunked.ENV_TILES:
                    chunked.TILES[entry] = value
        _applied = str(path) if path else None
        return _applied


def ensure(device: torch.device) -> None:
    """apply() for a CUDA device, nothing otherwise: the per-call check."""
    if _applied is _UNSET and device.type == "cuda":
        apply(device)


def reset() -> None:
    """Forget the applied table and restore chunked.TILES (defaults and FLAGEN_CHUNK_TILES):
    for `flagen tune` and the tests."""
    global _applied
    with _lock:
        chunked.TILES.clear()
        chunked.TILES.update(chunked.DEFAULT_TILES)
        chunked.TILES.update(chunked.ENV_TILES)
        _applied = _UNSET
