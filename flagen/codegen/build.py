"""`flagen build`: render the built-in variants into generated/, check it, build user variants."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

from flagen.codegen.cache import import_path, verify, with_digest, write_atomic

GENERATED_DIR = Path(__file__).resolve().parent.parent.parent / "generated"

_builtin_modules: dict[str, ModuleType] = {}
_lock = threading.Lock()


def builtin_source(spec) -> str:
    from flagen.codegen.render import render
    return with_digest(render(spec))


def build_builtins(out_dir: Path = GENERATED_DIR, check: bool = False, progress=None) -> list[str]:
    """Render every built-in into ``out_dir``. Returns the names whose files were (or, with
    ``check``, would be) written or removed; ``check`` writes nothing."""
    from flagen.ir.library import BUILTINS
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for n, (name, spec) in enumerate(sorted(BUILTINS.items()), 1):
        path = out_dir / f"{name}.py"
        source = builtin_source(spec)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != source:
            changed.append(name)
            if not check:
                write_atomic(path, source)
        if progress:
            progress(n, len(BUILTINS), name, current != source)
    for path in sorted(out_dir.glob("*.py")):
        if path.stem not in BUILTINS and path.stem != "__init__":
            changed.append(path.stem)
            if not check:
                path.unlink()
    return changed


def load_builtin(name: str) -> ModuleType:
    """The generated module of a built-in variant: from generated/ (no Jinja or sympy work),
    or rendered through the cache if generated/ lacks it or it is corrupt."""
    with _lock:
        if name in _builtin_modules:
            return _builtin_modules[name]
        path = GENERATED_DIR / f"{name}.py"
        if path.exists() and verify(path.read_text(encoding="utf-8")):
            module = import_path(path, f"flagen_generated_{name}")
        else:
            from flagen.codegen import cache
            from flagen.ir.library import BUILTINS
            if name not in BUILTINS:
                raise KeyError(f"no built-in variant named {name!r}")
            module = cache.load(BUILTINS[name])
        _builtin_modules[name] = module
        return module


def load_user_specs(path: Path) -> list:
    """The `Recurrence` specs a user's variant file defines (a VARIANTS list, or every
    module-level Recurrence)."""
    from flagen.ir.spec import Recurrence
    spec = importlib.util.spec_from_file_location(f"flagen_user_{path.stem}", path)
    if spec is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    found = getattr(module, "VARIANTS", None)
    if found is None:
        found = [v for v in vars(module).values() if isinstance(v, Recurrence)]
    if not found:
        raise ValueError(f"{path}: defines no flagen.ir.Recurrence (nor a VARIANTS list)")
    return list(found)
