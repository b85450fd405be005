"""`flagen build`: render the built-in variants into generated/, check it, build user variants."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

from flagen.codegen.cache import import_path, verify, with_digest, write_atomic

# Where `flagen build` writes the built-ins' modules (a checkout: committed), and where an
# installed wheel carries them (setup.py copies generated/ there)
GENERATED_DIR = Path(__file__).resolve().parent.parent.parent / "generated"
PACKAGED_DIR = Path(__file__).resolve().parent.parent / "generated"


def generated_dir() -> Path:
    """The folder the built-ins' modules are loaded from: the wheel's copy if installed, else
    the checkout's generated/."""
    return PACKAGED_DIR if PACKAGED_DIR.is_dir() else GENERATED_DIR

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
    """The generated module of a built-in variant: from generated/ or the wheel's copy (no
    Jinja or sympy work), or rendered through the cache if that lacks it or it is corrupt."""
    with _lock:
        if name in _builtin_modules:
            return _builtin_modules[name]
        path = generated_dir() / f"{name}.py"
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


class VariantFileError(ValueError):
    """A user's variant file that cannot be used: missing, not a file, failing to import,
    defining no Recurrence, or reusing a name. The message is one line naming the file."""


def _error_line(path: Path, e: BaseException) -> str:
    """The line of ``path`` the traceback of ``e`` last passed through, as ``:N`` (or "")."""
    line, tb = "", e.__traceback__
    target = str(path.resolve())
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in (str(path), target):
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def load_user_specs(path: Path) -> list:
    """The `Recurrence` specs a user's variant file defines (a VARIANTS list, or every
    module-level Recurrence). Raises :class:`VariantFileError` for a file that cannot be
    used, including one whose spec takes a built-in variant's name with a different IR."""
    from importlib.machinery import SourceFileLoader

    from flagen.codegen.cache import check_builtin_name
    from flagen.ir.spec import Recurrence, SpecError
    path = Path(path)
    if not path.exists():
        raise VariantFileError(f"{path}: no such file")
    if not path.is_file():
        raise VariantFileError(f"{path}: not a file{' (a directory)' if path.is_dir() else ''}; "
                               "give a Python file that defines flagen.ir.Recurrence specs")
    name = f"flagen_user_{path.stem}"
    # an explicit loader: any file name will do, not only *.py
    spec = importlib.util.spec_from_file_location(name, path, loader=SourceFileLoader(name, str(path)))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(spec.name, None)
        where = f":{e.lineno}" if e.lineno else ""
        raise VariantFileError(f"{path}{where}: syntax error: {e.msg}") from None
    except SpecError as e:
        sys.modules.pop(spec.name, None)
        raise VariantFileError(f"{path}{_error_line(path, e)}: invalid variant: {e}") from e
    except OSError as e:
        sys.modules.pop(spec.name, None)
        raise VariantFileError(f"{path}{_error_line(path, e)}: cannot read or import it: {e}") from e
    except Exception as e:
        sys.modules.pop(spec.name, None)
        raise VariantFileError(f"{path}{_error_line(path, e)}: importing it raised {type(e).__name__}: {e}") from e
    found = getattr(module, "VARIANTS", None)
    if found is None:
        found = [v for v in vars(module).values() if isinstance(v, Recurrence)]
    elif isinstance(found, (str, bytes)) or not hasattr(found, "__iter__"):
        raise VariantFileError(f"{path}: VARIANTS must be a list of flagen.ir.Recurrence, got {type(found).__name__}")
    found = list(found)
    bad = [v for v in found if not isinstance(v, Recurrence)]
    if bad:
        raise VariantFileError(f"{path}: VARIANTS must hold only flagen.ir.Recurrence specs, got {bad[0]!r}")
    if not found:
        raise VariantFileError(f"{path}: defines no flagen.ir.Recurrence (nor a VARIANTS list)")
    seen = {}
    for v in found:
        if v.name in seen and seen[v.name].ir_text() != v.ir_text():
            raise VariantFileError(f"{path}: two different variants are named {v.name!r}")
        seen[v.name] = v
        try:
            check_builtin_name(v)
        except SpecError as e:
            raise VariantFileError(f"{path}: {e}") from None
    return list(seen.values())
