"""The `flagen` command's user errors (one line on stderr, a non-zero exit, no traceback), the
refusal of user variants that reuse a built-in's name, and the sympy- and Jinja-free runtime
path (`import fla`, calling built-in ops)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["FLAGEN_CACHE_DIR"] = str(tmp_path / "cache")  # never the user's cache
    env.update(extra)
    return env


def _flagen(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flagen.cli", *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)


def _assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- variant files ------------------------------------------------------------------------

FILES = {
    "syntax.py": "x = (\n",
    "spec_error.py": """
        from flagen.ir import Decay, Recurrence
        bad = Recurrence(name="bad", decay=Decay.SCALAR)   # a scalar decay without a gate
    """,
    "raises.py": "x = 1\nraise RuntimeError('something broke\\nacross two lines')\n",
    "no_recurrence.py": "x = 1\n",
    "bad_variants.py": "VARIANTS = 3\n",
    "shadows_gla.py": """
        from flagen.ir import Recurrence
        gla = Recurrence(name="gla")   # not the built-in GLA
    """,
    "shadows_retention.py": """
        from flagen.ir import Decay, Input, Recurrence, Shape
        g = Input("g", Shape.TOKEN)
        mine = Recurrence(name="retention", inputs=(g,), decay=Decay.SCALAR, gate=g.symbol)
    """,
    "mine.py": """
        from flagen.ir import Recurrence
        mine = Recurrence(name="my_linear_attn", doc="plain linear attention under my own name")
    """,
}


@pytest.fixture
def files(tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "a_directory").mkdir()
    return tmp_path


@pytest.mark.parametrize("args, needles", [
    (["build", "missing.py"], ["missing.py", "no such file"]),
    (["build", "a_directory"], ["a_directory", "not a file"]),
    (["build", "syntax.py"], ["syntax.py:1", "syntax error"]),
    (["build", "spec_error.py"], ["spec_error.py:3", "bad.gate"]),
    (["build", "raises.py"], ["raises.py:2", "RuntimeError", "something broke across two lines"]),
    (["build", "no_recurrence.py"], ["no_recurrence.py", "defines no flagen.ir.Recurrence"]),
    (["build", "bad_variants.py"], ["bad_variants.py", "VARIANTS"]),
    (["build", "shadows_gla.py"], ["shadows_gla.py", "'gla'", "built-in"]),
    (["build", "mine.py", "shadows_retention.py"], ["shadows_retention.py", "'retention'", "built-in"]),
    (["show", "my_linear_attn", "--variant-file", "missing.py"], ["missing.py", "no such file"]),
    (["show", "gla", "--variant-file", "missing.py"], ["missing.py", "no such file"]),
    (["show", "my_linear_attn", "--variant-file", "raises.py"], ["raises.py:2", "RuntimeError"]),
    (["show", "my_linear_attn", "--variant-file", "syntax.py"], ["syntax.py:1", "syntax error"]),
    (["show", "gla", "--variant-file", "shadows_gla.py"], ["'gla'", "built-in"]),
], ids=lambda x: "_".join(x) if isinstance(x, list) and x[0] in ("build", "show") else None)
def test_user_errors_are_one_line(files, args, needles):
    _assert_user_error(_flagen(files, *args), *needles)


def test_build_refuses_before_building_anything(files):
    """A bad file among several: nothing is built, not even the good file's variants."""
    _assert_user_error(_flagen(files, "build", "mine.py", "shadows_gla.py"), "'gla'")
    assert not list((files / "cache").glob("my_linear_attn-*.py"))


def test_show_a_variant_not_built_yet(files):
    r = _flagen(files, "show", "my_linear_attn", "--variant-file", "mine.py")
    line = _assert_user_error(r, "my_linear_attn", "not built", "flagen build mine.py")
    assert "recurrence my_linear_attn" in r.stdout   # the IR is still shown
    assert "source:" not in r.stdout, line
    # once built, show prints where its source is
    r = _flagen(files, "build", "mine.py")
    assert r.returncode == 0, r.stderr
    built = Path(r.stdout.strip().split(": ", 1)[1])
    r = _flagen(files, "show", "my_linear_attn", "--variant-file", "mine.py")
    assert r.returncode == 0, r.stderr
    assert f"source: {built}" in r.stdout and built.is_file()
    _assert_user_error(_flagen(files, "show", "no_such_variant", "--variant-file", "mine.py"), "no_such_variant")


# --- built-in names -----------------------------------------------------------------------

def test_compile_refuses_a_builtin_name_with_another_ir(tmp_path, monkeypatch):
    import flagen
    from flagen.codegen import cache
    from flagen.ir import Decay, Input, Recurrence, Shape, SpecError
    from flagen.ir.library import BUILTINS
    from flagen.runtime.op import get_op
    monkeypatch.setenv("FLAGEN_CACHE_DIR", str(tmp_path / "cache"))
    g = Input("g", Shape.TOKEN)
    impostors = [Recurrence(name="gla"),
                 Recurrence(name="retention", inputs=(g,), decay=Decay.SCALAR, gate=g.symbol)]
    for spec in impostors:
        with pytest.raises(SpecError, match=repr(spec.name)):
            flagen.compile(spec)
        with pytest.raises(SpecError, match=repr(spec.name)):
            get_op(spec)
        with pytest.raises(SpecError, match=repr(spec.name)):
            cache.load(spec)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.py"))
    # the built-in's own spec, or an equal copy (other doc), is that variant: accepted
    for name in ("gla", "retention"):
        cache.check_builtin_name(BUILTINS[name])
        cache.check_builtin_name(BUILTINS[name].replace(doc="a copy"))


# --- the runtime path ---------------------------------------------------------------------

_RUNTIME_SCRIPT = textwrap.dedent("""
    import sys
    import fla
    import fla.ops
    from flagen.runtime.op import get_op
    import torch
    B, T, H, K, V = 1, 5, 2, 8, 8
    q, k, v = (torch.randn(B, T, H, K) for _ in range(3))
    o, ht = fla.ops.fused_recurrent_retention(q, k, v, output_final_state=True)
    o, ht = fla.ops.chunk_gla(q, k, v, -torch.rand(B, T, H, K), output_final_state=True)
    get_op("simple_gla")
    loaded = sorted(m for m in ("sympy", "jinja2", "flagen.ir", "flagen.codegen.render") if m in sys.modules)
    assert not loaded, f"the runtime path imported {loaded}"
    # flagen's public names still work, loaded when first touched
    import flagen
    from flagen import Input, SpecError
    assert flagen.Recurrence.__module__ == "flagen.ir.spec" and flagen.Shape.TOKEN
    assert "sympy" in sys.modules
    assert callable(flagen.compile) and "Recurrence" in dir(flagen)
    print("ok")
""")


def test_runtime_path_imports_neither_sympy_nor_jinja(tmp_path):
    r = subprocess.run([sys.executable, "-c", _RUNTIME_SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                       env=_env(tmp_path, TRITON_INTERPRET="1"), timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
