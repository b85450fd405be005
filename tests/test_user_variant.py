"""A user's own variants (examples/variants), built with `flagen build` and tested exactly like
the built-ins: output, final state and every gradient against the float64 reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import flagen
from flagen import reference
from flagen.codegen import build, cache
from recurrent_cases import DEVICE, STATE_TOL, TOL
from test_recurrent_ops import close

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "variants" / "novel_delta_rules.py"
SPECS = {s.name: s for s in build.load_user_specs(EXAMPLE)}


def test_flagen_build_cli_builds_user_variants(tmp_path):
    env = dict(__import__("os").environ, FLAGEN_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "flagen.cli", "build", str(EXAMPLE)], env=env,
                         capture_output=True, text=True, check=True).stdout
    for name in SPECS:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + ":"))
        path = Path(line.split(": ", 1)[1])
        assert path.parent == tmp_path and cache.verify(path.read_text())


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("cu", [None, [0, 5, 5, 23]], ids=["fixed", "varlen"])
def test_user_variant_against_reference(name, cu):
    spec = SPECS[name]
    op = flagen.compile(spec)
    gen = torch.Generator().manual_seed(3)
    B, T, H, HV, K, V = (2, 23, 1, 2, 20, 12) if cu is None else (1, 23, 1, 2, 20, 12)
    N = B if cu is None else len(cu) - 1
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, HV, V)
    inputs = {}
    for i in spec.inputs:
        shape = {"token": (B, T, HV), "token_key": (B, T, HV, K), "head": (HV,), "head_key": (HV, K)}[i.shape.value]
        inputs[i.name] = r(*shape) * 2
    h0 = r(N, HV, K, V)
    leaves = [q, k, v, h0, *inputs.values()]
    for x in leaves:
        x.requires_grad_(True)
    cu_t = torch.tensor(cu, device=DEVICE) if cu is not None else None
    o, ht = op(q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu_t, **inputs)
    ro, rht = reference.run(spec, q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu_t, **inputs)
    close("o", o, ro, TOL)
    close("final_state", ht, rht, STATE_TOL)
    do, dS = torch.randn_like(ro), torch.randn_like(rht)
    ours = torch.autograd.grad((o.double() * do).sum() + (ht.double() * dS).sum(), leaves)
    theirs = torch.autograd.grad((ro * do).sum() + (rht * dS).sum(), leaves)
    for n, a, b in zip(["q", "k", "v", "initial_state", *inputs], ours, theirs):
        close(f"d{n}", a, b, TOL)
