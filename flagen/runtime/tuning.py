"""Per-GPU tuning tables: the chunked kernels' launch options (chunked.TILES entries) chosen by
``flagen tune`` on one GPU model, looked up at run time, never autotuned.

A table is JSON, ``{"device": ..., "arch": ..., "versions": ..., "command": ..., "tiles":
{entry: [BK, BV, num_warps, num_stages]}, "timings": ...}``, named after the GPU
(``device_key``: ``nvidia-h200.json``) or its architecture (``sm90.json``, any GPU of it). The
built-ins' tables live beside their kernels (``generated/tuning/``, committed); a user's (made
with ``flagen tune --out``) under the cache directory's ``tuning/``, and take precedence. A
table made for user variants (``flagen tune --variant-file``) lists them (``"variants":
[names]``), is named ``<key>@<names>.json`` in the user's ``tuning/``, and sets only their
launch options ("<variant>/<entry>" TILES entries, chunked.entry_tiles), on top of the GPU's
table: tuning a variant of your own changes nothing else. ``FLAGEN_CHUNK_TILES`` overrides
them all. A GPU with no table runs the defaults in chunked.TILES and says once how to make one.
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


def variant_tables(keys: tuple[str, ...]) -> list[Path]:
    """The user's tables made for variants of their own (``<key>@<names>.json``); of two for
    the same names, the GPU's own beats its architecture's."""
    folder, found, names = table_dirs()[0], [], set()
    for key in keys:
        for path in sorted(folder.glob(f"{key}@*.json")):
            if path.name.split("@", 1)[1] not in names:
                names.add(path.name.split("@", 1)[1])
                found.append(path)
    return found


def read_table(path: Path) -> dict[str, tuple[int, ...]]:
    """A table's TILES entries; a malformed table is an error naming the file."""
    return _read(path)[0]


def table_variants(path: Path) -> list[str] | None:
    """The variants a table was made for (None: every variant)."""
    return _read(path)[1]


def _read(path: Path) -> tuple[dict[str, tuple[int, ...]], list[str] | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tiles = {str(k): tuple(int(x) for x in v) for k, v in data["tiles"].items()}
        variants = data.get("variants")
        if variants is not None and (not isinstance(variants, list) or not all(isinstance(v, str) and v
                                                                                   for v in variants)):
            raise TypeError(f'"variants" must be a list of variant names, got {variants!r}')
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"flagen tuning table {path} is unreadable ({type(e).__name__}: {e}); "
                         "fix or delete it, or run `flagen tune` again") from e
    for entry, value in tiles.items():
        if entry.split(":")[0] not in chunked.DEFAULT_TILES or len(value) not in (3, 4):
            raise ValueError(f"flagen tuning table {path}: entry {entry!r} = {list(value)} is not a TILES "
                             "entry of 3 or 4 integers")
    return tiles, variants


def apply(device: torch.device) -> str | None:
    """Apply the table of ``device`` (a CUDA device) to chunked.TILES, and the user's tables made
    for variants of their own on top, once per process: TILES are process-wide, so in a
    process that drives GPUs of two models the first one's tables hold. Entries set by
    FLAGEN_CHUNK_TILES stay. Returns the GPU's table's path, or None (the defaults, with a
    one-line hint)."""
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
            _set(path)
        for scoped in variant_tables(keys):
            if _read(scoped)[1] is None:  # (named for variants, it must say which)
                raise ValueError(f"flagen tuning table {scoped} lists no \"variants\"; a <gpu>@<names>.json "
                                 "table is for the variants it names: fix or delete it")
            _set(scoped)
        _applied = str(path) if path else None
        return _applied


def _set(path: Path) -> None:
    """A table's entries into chunked.TILES: as they are, or for each variant it lists
    ("<variant>/<entry>"); FLAGEN_CHUNK_TILES's stay."""
    tiles, variants = _read(path)
    for entry, value in tiles.items():
        if variants is None:
            if entry not in chunked.ENV_TILES:
                chunked.TILES[entry] = value
        else:
            for variant in variants:
                chunked.TILES[f"{variant}/{entry}"] = value


def ensure(device: torch.device) -> None:
    """apply() for a CUDA device, nothing otherwise: the per-call check."""
    if _applied is _UNSET and device.type == "cuda":
        apply(device)


def hold() -> None:
    """reset(), then apply no table in this process: `flagen tune` sets TILES itself, and a
    table applied on its first step (a user variant's own, from an earlier run) would override
    every candidate it times."""
    global _applied
    reset()
    with _lock:
        _applied = None


def reset() -> None:
    """Forget the applied table and restore chunked.TILES (defaults and FLAGEN_CHUNK_TILES):
    for `flagen tune` and the tests."""
    global _applied
    with _lock:
        chunked.TILES.clear()
        chunked.TILES.update(chunked.DEFAULT_TILES)
        chunked.TILES.update(chunked.ENV_TILES)
        _applied = _UNSET
