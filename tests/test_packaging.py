"""A built wheel carries the built-in variants' kernels and tuning tables: installed apart from this checkout,
importing flagen and calling ops renders nothing (no Jinja, no sympy printing, nothing written
to the cache); `flagen build` there refuses to write into site-packages."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CALL_OPS = r"""
import json, sys
import torch
import flagen
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
q, k, v = (torch.randn(1, 20, 2, 16) for _ in range(3))
g = -torch.rand(1, 20, 2)
o1, _ = chunk_simple_gla(q, k, v, g=g)
o2, _ = fused_recurrent_simple_gla(q, k, v, g=g)
print(json.dumps(dict(flagen=flagen.__file__, close=bool(torch.allclose(o1, o2, atol=1e-4)),
                      rendered=sorted(m for m in ("jinja2", "flagen.codegen.render") if m in sys.modules))))
"""


def test_wheel_carries_generated_kernels(tmp_path):
    pytest.importorskip("setuptools")  # (the build runs without isolation: no network)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("flagen", "fla", "generated"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # a tuning table goes with the kernels (a made-up GPU's, so that one is there to carry)
    (src / "generated" / "tuning").mkdir(exist_ok=True)
    (src / "generated" / "tuning" / "made-up-gpu.json").write_text('{"tiles": {"o": [64, 64, 4, 1]}}')
    tables = sorted(p.name for p in (src / "generated" / "tuning").glob("*.json"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("flagen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    kernels = sorted(p.name for p in (ROOT / "generated").glob("*.py"))
    missing = [n for n in kernels if f"flagen/generated/{n}" not in names]
    assert kernels and not missing, f"the wheel lacks generated kernels: {missing}"
    missing = [n for n in tables if f"flagen/generated/tuning/{n}" not in names]
    assert not missing, f"the wheel lacks tuning tables: {missing}"

    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    # -S: no .pth files, so this checkout's editable install cannot shadow the wheel
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), *site.getsitepackages()]),
               FLAGEN_CACHE_DIR=str(tmp_path / "cache"), TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-S", "-c", CALL_OPS], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["flagen"]).is_relative_to(target), result
    assert result["close"]
    assert result["rendered"] == [], f"an installed flagen rendered kernels: imported {result['rendered']}"
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.rglob("*.py")), "an installed flagen wrote to the kernel cache"

    build = subprocess.run([sys.executable, "-S", "-m", "flagen.cli", "build", "--check"], env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode != 0 and "installed wheel" in build.stderr, build.stderr
