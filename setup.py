"""Packaging beyond pyproject.toml: a built wheel carries the committed kernels of the built-in
variants (generated/, rendered by `flagen build`) and the per-GPU tuning tables
(generated/tuning/, written by `flagen tune`) as flagen/generated/, so that an installed
flagen imports them and renders nothing (flagen.codegen.build.generated_dir finds them)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithKernels(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads generated/ in place
            return
        kernels = sorted(Path(__file__).resolve().parent.joinpath("generated").glob("*.py"))
        target = Path(self.build_lib) / "flagen" / "generated"
        shutil.rmtree(target, ignore_errors=True)  # no stale kernels from an earlier build
        if not kernels:  # (no generated/: the kernels are rendered at run time)
            return
        target.mkdir(parents=True)
        for path in kernels:
            shutil.copyfile(path, target / path.name)
        tables = sorted(Path(__file__).resolve().parent.joinpath("generated", "tuning").glob("*.json"))
        if tables:  # the per-GPU tuning tables (flagen tune, flagen.runtime.tuning)
            (target / "tuning").mkdir()
            for path in tables:
                shutil.copyfile(path, target / "tuning" / path.name)


setup(cmdclass={"build_py": BuildPyWithKernels})
