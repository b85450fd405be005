"""Content-addressed on-disk cache of generated modules, and their import.

A module's key hashes the spec's IR text, the templates, the flagen version and the Triton
version. Entries live under ``$FLAGEN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/flagen`` or
``~/.cache/flagen``); an unwritable location falls back to a temporary directory with a
warning. Each entry ends with a digest line over its body: an entry that does not match its
digest (a truncated or corrupted file) is regenerated. Writes go to a temporary file in the
same directory and are renamed into place, so concurrent writers and killed processes never
leave a half-written module under the entry's name. Imported modules are memoised per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import ModuleType

import flagen

DIGEST_PREFIX = "# flagen-digest: "

_memo: dict[str, ModuleType] = {}
_fallback: Path | None = None
_lock = threading.Lock()


def cache_dir() -> Path:
    """The cache directory, created if needed; falls back to a temp dir if unwritable."""
    env = os.environ.get("FLAGEN_CACHE_DIR")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "flagen"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", delete=True)
        probe.close()
        return path
    except OSError as e:
        global _fallback
        if _fallback is None:
            # private to this process: nobody else can plant a module in it
            _fallback = Path(tempfile.mkdtemp(prefix="flagen-cache-"))
        warnings.warn(f"flagen: cache directory {path} is not writable ({e}); using {_fallback}", stacklevel=3)
        return _fallback


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:  # rendering needs no Triton; importing the module does
        return "none"


def cache_key(spec) -> str:
    from flagen.codegen.render import template_hash
    h = hashlib.sha256()
    for part in (spec.ir_text(), template_hash(), flagen.__version__, _triton_version()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def with_digest(source: str) -> str:
    """``source`` followed by the digest line that :func:`verify` checks."""
    return source + DIGEST_PREFIX + hashlib.sha256(source.encode()).hexdigest() + "\n"


def verify(text: str) -> bool:
    """True when ``text`` ends with a digest line matching everything before it."""
    body, sep, tail = text.rpartition(DIGEST_PREFIX)
    if not sep or not tail.endswith("\n"):
        return False
    return hashlib.sha256(body.encode()).hexdigest() == tail.strip()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see either nothing, the old file, or all of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def import_path(path: Path, module_name: str) -> ModuleType:
    """Import a generated module from a file (Triton needs a real file for its source)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def entry_path(spec) -> Path:
    return cache_dir() / f"{spec.name}-{cache_key(spec)[:24]}.py"


def check_builtin_name(spec) -> None:
    """Raise ``SpecError`` when ``spec`` takes a built-in variant's name but is not that variant
    (its IR text differs): the name would then mean two different kernels (in `flagen show`,
    in error messages, in cache entries). The built-in's own spec (or an equal copy) passes."""
    from flagen.ir.library import BUILTINS
    builtin = BUILTINS.get(spec.name)
    if builtin is not None and builtin is not spec and builtin.ir_text() != spec.ir_text():
        from flagen.ir.spec import SpecError
        raise SpecError(f"the name {spec.name!r} belongs to a built-in variant and this spec differs from it; "
                        "give your variant another name")


def load(spec) -> ModuleType:
    """The generated module of ``spec``, from the cache, rendering it first if absent or corrupt.
    A spec that reuses a built-in variant's name with a different IR raises ``SpecError``."""
    check_builtin_name(spec)
    key = cache_key(spec)
    with _lock:
        if key in _memo:
            return _memo[key]
        path = entry_path(spec)
        text = None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
        if text is None or not verify(text):
            from flagen.codegen.render import render
            write_atomic(path, with_digest(render(spec)))
        module = import_path(path, f"flagen_cache_{spec.name}_{key[:12]}")
        _memo[key] = module
        return module
