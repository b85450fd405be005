"""The compiler's own guarantees: deterministic rendering, module headers, the generated/
staleness check, the on-disk cache under concurrency and corruption, the sympy -> Triton
printer (evaluated numerically through a float64 shim of ``tl``), sympy's derivatives
against finite differences, and spec validation.

Everything here is CPU-only and fast; the few kernels it runs use tiny shapes in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before Triton is imported).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import zlib
from pathlib import Path

import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import flagen
from flagen.codegen import build, cache, printer, render
from flagen.ir import Decay, Input, Readout, Recurrence, Shape, SpecError, head_index
from flagen.ir.functions import logsigmoid, sigmoid, softplus
from flagen.ir.library import BUILTINS

REPO = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("FLAGEN_TEST_DEVICE", "cpu")
ALL_SPECS = sorted(BUILTINS)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty, private FLAGEN_CACHE_DIR and an empty in-process memo."""
    d = tmp_path / "cache"
    monkeypatch.setenv("FLAGEN_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_fallback", None)
    cache._memo.clear()
    yield d
    cache._memo.clear()


def _subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


# --- determinism and headers --------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_SPECS)
def test_render_is_deterministic_in_process(name):
    spec = BUILTINS[name]
    a, b = render.render(spec), render.render(spec)
    assert a == b
    # a structurally equal, freshly built spec renders the same bytes too
    assert render.render(spec.replace()) == a


def test_render_is_byte_identical_in_fresh_processes():
    """A fresh interpreter (with a different hash seed each time) renders the same bytes for every
    built-in as this process: nothing in a module depends on set/dict iteration order or ids."""
    script = textwrap.dedent("""
        import json, sys
        from flagen.codegen.render import render
        from flagen.ir.library import BUILTINS
        sys.stdout.write(json.dumps({n: render(s) for n, s in BUILTINS.items()}))
    """)
    ours = {n: render.render(s) for n, s in BUILTINS.items()}
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd=REPO,
                             env=_subprocess_env(PYTHONHASHSEED=seed), timeout=120)
        theirs = json.loads(out.stdout.decode("utf-8"))
        assert theirs.keys() == ours.keys()
        for n in ours:
            assert theirs[n] == ours[n], f"{n}: rendering differs in a fresh process (PYTHONHASHSEED={seed})"


def test_render_bytes_of_one_spec_in_a_subprocess():
    name = "kda_l2norm_gate_lower_bound_beta_sigmoid"
    script = ("import sys; from flagen.codegen.render import render; from flagen.ir.library import BUILTINS; "
              f"sys.stdout.buffer.write(render(BUILTINS[{name!r}]).encode('utf-8'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd=REPO,
                         env=_subprocess_env(), timeout=120)
    assert out.stdout == render.render(BUILTINS[name]).encode("utf-8")


@pytest.mark.parametrize("name", ["gla", "retention", "kda_l2norm_gate_lower_bound_beta_sigmoid", "dplr", "rwkv6"])
def test_header_names_ir_and_template_hash(name):
    spec = BUILTINS[name]
    src = render.render(spec)
    header = src.split("\nimport triton", 1)[0]
    first = header.splitlines()[0]
    assert render.template_hash() in first
    assert f"flagen {flagen.__version__}" in first
    header_lines = header.splitlines()
    for line in spec.ir_text().splitlines():
        assert f"#   {line}" in header_lines, f"IR line {line!r} missing from the header"
    assert f"NAME = {json.dumps(spec.name)}" in src
    # the committed generated/ file carries the same header
    committed = (build.GENERATED_DIR / f"{name}.py").read_text(encoding="utf-8")
    assert committed.startswith(header)


def test_normaliser_is_specialised_into_the_kernels():
    """Linear attention's normaliser comes from the IR through the templates: the normalised
    variant's forward kernels divide by the divisor and its backward starts from its own
    kernel; no other module carries any of it (no dead branches)."""
    for name, spec in BUILTINS.items():
        src = render.render(spec).split("\nimport triton", 1)[1]  # past the header (it lists templates)
        kernels = src.split("KERNELS = {", 1)[1]
        if spec.normalize:
            for kernel in ("recurrent_fwd", "decode_step", "chunk_fwd_o_tile"):
                body = src.split(f"def {name}_{kernel}(", 1)[1].split("@triton.jit", 1)[0]
                assert "b_o = b_o / b_den" in body, f"{name}_{kernel} does not divide by the divisor"
            assert '"normalizer_bwd"' in kernels
        else:
            assert "b_den" not in src and "b_dz" not in src and "normalizer_bwd" not in src, name


def test_template_hash_is_hex_and_stable():
    h = render.template_hash()
    assert len(h) == 16 and int(h, 16) >= 0
    render.template_hash.cache_clear()
    assert render.template_hash() == h


# --- generated/ staleness ------------------------------------------------------------------

def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_build_builtins_check_detects_stale_missing_and_extra(tmp_path):
    out = tmp_path / "generated"
    written = build.build_builtins(out_dir=out)
    assert sorted(written) == ALL_SPECS
    assert sorted(p.stem for p in out.glob("*.py")) == ALL_SPECS
    for p in out.glob("*.py"):
        assert cache.verify(p.read_text(encoding="utf-8")), p.name
    assert build.build_builtins(out_dir=out, check=True) == []
    assert build.build_builtins(out_dir=out) == []  # idempotent

    modified, deleted = "gla", "retention"
    with open(out / f"{modified}.py", "a", encoding="utf-8") as f:
        f.write("# a stray edit\n")
    (out / f"{deleted}.py").unlink()
    (out / "extra.py").write_text("print('not a built-in')\n", encoding="utf-8")
    before = _snapshot(out)
    stale = build.build_builtins(out_dir=out, check=True)
    assert len(stale) == 3 and set(stale) == {modified, deleted, "extra"}
    assert _snapshot(out) == before, "check=True must write nothing"

    # a real build repairs all three, after which the check passes again
    assert set(build.build_builtins(out_dir=out)) == {modified, deleted, "extra"}
    assert not (out / "extra.py").exists()
    assert build.build_builtins(out_dir=out, check=True) == []


def test_committed_generated_dir_is_up_to_date():
    r = subprocess.run([sys.executable, "-m", "flagen.cli", "build", "--check", "-q"], capture_output=True,
                       text=True, cwd=REPO, env=_subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "up to date" in r.stdout


def test_committed_generated_files_verify():
    for name in ALL_SPECS:
        text = (build.GENERATED_DIR / f"{name}.py").read_text(encoding="utf-8")
        assert cache.verify(text), name
        assert text == build.builtin_source(BUILTINS[name]), name


# --- the on-disk cache --------------------------------------------------------------------

_RACE_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    me, sync = sys.argv[1], Path(sys.argv[2])
    from flagen.codegen import cache
    from flagen.ir.library import BUILTINS
    (sync / f"ready-{me}").touch()
    deadline = time.time() + 60
    while not (sync / "go").exists():
        if time.time() > deadline:
            sys.exit("no go signal")
        time.sleep(0.002)
    m = cache.load(BUILTINS["gla"])
    assert m.NAME == "gla" and "fwd" in m.KERNELS
    # hammer write_atomic on one shared file: every read sees some writer's whole text
    target = cache.cache_dir() / "race-atomic.txt"
    for i in range(40):
        cache.write_atomic(target, cache.with_digest(f"writer {me} round {i}\\n" + "x" * (997 * (i % 7))))
        text = target.read_text(encoding="utf-8")
        assert cache.verify(text), "torn read of an atomically written file"
    print(m.__file__)
""")


def test_cache_processes_racing_on_an_empty_cache(tmp_path):
    cache_root = tmp_path / "shared-cache"
    sync = tmp_path / "sync"
    sync.mkdir()
    env = _subprocess_env(FLAGEN_CACHE_DIR=str(cache_root), TRITON_INTERPRET="1")
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", _RACE_SCRIPT, str(i), str(sync)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    try:
        deadline = time.time() + 90
        while len(list(sync.glob("ready-*"))) < n and time.time() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.01)
        (sync / "go").touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    files = {out.strip() for out, _ in results}
    assert len(files) == 1, files
    entries = sorted(cache_root.glob("*.py"))
    assert len(entries) == 1 and entries[0].name.startswith("gla-")
    assert str(entries[0]) in files
    leftovers = [f for f in os.listdir(cache_root) if f.endswith(".tmp") or f.startswith(".probe-")]
    assert leftovers == []
    assert cache.verify(entries[0].read_text(encoding="utf-8"))
    assert cache.verify((cache_root / "race-atomic.txt").read_text(encoding="utf-8"))


def _gla_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, T, H, K, V = 1, 5, 2, 8, 8
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    g = -torch.rand(B, T, H, K, generator=gen) * 0.5
    return q, k, v, g


def _check_gla_module_works(module):
    from flagen import reference
    from flagen.runtime.op import RecurrentOp
    op = RecurrentOp(module)
    q, k, v, g = (x.to(DEVICE) for x in _gla_inputs())
    o, ht = op(q, k, v, g=g, output_final_state=True)
    ro, rht = reference.run(BUILTINS["gla"], q.cpu(), k.cpu(), v.cpu(), output_final_state=True, g=g.cpu())
    torch.testing.assert_close(o.cpu().double(), ro, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ht.cpu().double(), rht, rtol=1e-4, atol=1e-4)


def test_cache_memoises_modules_in_process(tmp_cache):
    spec = BUILTINS["gla"]
    m1 = cache.load(spec)
    m2 = cache.load(spec)
    assert m1 is m2
    # an equal spec built separately hits the same entry and module
    assert cache.load(spec.replace()) is m1
    assert Path(m1.__file__).parent == tmp_cache
    assert Path(m1.__file__) == cache.entry_path(spec)


def test_cache_regenerates_a_corrupt_entry(tmp_cache):
    spec = BUILTINS["gla"]
    path = Path(cache.load(spec).__file__)
    good = path.read_text(encoding="utf-8")
    assert cache.verify(good)
    path.write_text(good[: len(good) // 2], encoding="utf-8")
    assert not cache.verify(path.read_text(encoding="utf-8"))
    cache._memo.clear()
    module = cache.load(spec)
    assert Path(module.__file__) == path
    assert path.read_text(encoding="utf-8") == good
    assert cache.verify(path.read_text(encoding="utf-8"))
    _check_gla_module_works(module)


def test_cache_entry_with_a_bad_digest_is_regenerated(tmp_cache):
    """Same length, one byte changed in the body: the digest catches it."""
    spec = BUILTINS["gla"]
    path = Path(cache.load(spec).__file__)
    good = path.read_text(encoding="utf-8")
    path.write_text(good.replace("NAME = \"gla\"", "NAME = \"glb\"", 1), encoding="utf-8")
    cache._memo.clear()
    assert cache.load(spec).NAME == "gla"
    assert path.read_text(encoding="utf-8") == good


def test_cache_survives_a_killed_writer(tmp_cache):
    """A writer killed mid-write leaves its temp file behind and, at worst, a truncated entry
    from some older non-atomic writer: loading still works and the stray file is harmless."""
    spec = BUILTINS["gla"]
    path = cache.entry_path(spec)
    source = cache.with_digest(render.render(spec))
    stray = path.parent / f".{path.name}.k1ll3d.tmp"
    stray.write_text(source[:1000], encoding="utf-8")
    path.write_text(source[: len(source) // 3], encoding="utf-8")
    module = cache.load(spec)
    assert Path(module.__file__) == path
    assert path.read_text(encoding="utf-8") == source
    assert [p.name for p in path.parent.glob("*.py")] == [path.name]
    _check_gla_module_works(module)


def test_verify_and_with_digest():
    body = "x = 1\n"
    text = cache.with_digest(body)
    assert cache.verify(text)
    assert not cache.verify(body)
    assert not cache.verify(text[:-1])            # digest line without its newline
    assert not cache.verify(text[:-2] + "\n")     # shortened digest
    assert not cache.verify("y" + text[1:])       # body changed
    assert not cache.verify("")


def test_write_atomic_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f.txt"
    for i in range(5):
        cache.write_atomic(target, f"round {i}\n")
    assert target.read_text() == "round 4\n"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


def test_cache_key_depends_on_the_ir_only():
    a = BUILTINS["gla"]
    assert cache.cache_key(a) == cache.cache_key(a.replace(doc="another doc"))
    assert cache.cache_key(a) != cache.cache_key(a.replace(name="gla2"))
    assert cache.cache_key(a) != cache.cache_key(BUILTINS["hgrn2"])


def test_unwritable_cache_dir_falls_back_with_a_warning(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("a regular file, not a directory\n")
    monkeypatch.setenv("FLAGEN_CACHE_DIR", str(afile / "sub"))
    # keep the fallback (under the system temp dir) inside this test's tmp_path
    tmp_root = tmp_path / "systemp"
    tmp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    monkeypatch.setattr(cache, "_fallback", None)
    with pytest.warns(UserWarning, match="not writable"):
        d = cache.cache_dir()
    assert d.is_dir() and d != afile / "sub"
    assert str(d).startswith(str(tmp_root))
    probe = d / "probe.txt"
    cache.write_atomic(probe, "ok\n")
    assert probe.read_text() == "ok\n"


def test_load_with_unwritable_cache_dir_still_works(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("FLAGEN_CACHE_DIR", str(afile / "sub"))
    tmp_root = tmp_path / "systemp"
    tmp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    monkeypatch.setattr(cache, "_fallback", None)
    cache._memo.clear()
    try:
        with pytest.warns(UserWarning):
            module = cache.load(BUILTINS["simple_gla"])
        assert module.NAME == "simple_gla"
        assert str(module.__file__).startswith(str(tmp_root))
    finally:
        cache._memo.clear()


# --- the printer ----------------------------------------------------------------------------

F64 = torch.float64


def _t(x):
    return torch.as_tensor(x, dtype=F64)


def _tl_shim():
    """Just the part of triton.language that printed expressions and HELPERS use, in float64."""
    return types.SimpleNamespace(
        exp=lambda x: torch.exp(_t(x)),
        exp2=lambda x: torch.exp2(_t(x)),
        log=lambda x: torch.log(_t(x)),
        log2=lambda x: torch.log2(_t(x)),
        sqrt=lambda x: torch.sqrt(_t(x)),
        sigmoid=lambda x: torch.sigmoid(_t(x)),
        maximum=lambda a, b: torch.maximum(_t(a), _t(b)),
        minimum=lambda a, b: torch.minimum(_t(a), _t(b)),
        abs=lambda x: torch.abs(_t(x)),
        where=lambda c, a, b: torch.where(_t(c).bool(), _t(a), _t(b)),
    )


def _namespace(values: dict[str, torch.Tensor], names: dict[str, str]) -> dict:
    ns = {"tl": _tl_shim(), "LOG2E": 1.0 / math.log(2.0), "__builtins__": __builtins__}
    assert float(printer.LOG2E) == ns["LOG2E"]
    for name, src in printer.HELPERS.items():
        lines = src.splitlines()
        assert lines[0] == "@triton.jit", name
        exec("\n".join(lines[1:]) + "\n", ns)
        assert callable(ns[name])
    for sym, var in names.items():
        if sym in values:
            ns[var] = values[sym]
    return ns


_TORCH_FUNCS = {name: (lambda fn: lambda a: fn(_t(a)))(fn) for name, fn in {
    "sigmoid": torch.sigmoid, "softplus": F.softplus, "logsigmoid": F.logsigmoid,
    "exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "sqrt": torch.sqrt}.items()}


def _lambdify(syms, expr):
    return sp.lambdify(syms, expr, modules=[_TORCH_FUNCS, "math"])


def _reference_value(expr, values: dict[str, torch.Tensor], like: torch.Tensor):
    syms = sorted(expr.free_symbols, key=lambda s: s.name)
    out = _lambdify(syms, expr)(*[values[s.name] for s in syms])
    return _t(out).expand_as(like).clone() if _t(out).dim() == 0 else _t(out)


# rtol 1e-12 everywhere; the absolute floor covers results that are ~0 by cancellation:
# the helpers compute log(1 + exp(-|x|)) and 2 sigmoid(2x) - 1 (not log1p / a true tanh), which
# are accurate to ~1e-16 absolutely but not relatively where the result is tiny.
RTOL, ATOL = 1e-12, 1e-15

x, y = sp.symbols("x y", real=True)
p = sp.Symbol("p", positive=True)
n = sp.Symbol("n", real=True, nonzero=True)
lb = sp.Symbol("lower_bound", real=True)

PRINT_CASES = {
    "sigmoid": sigmoid(x),
    "softplus": softplus(x),
    "logsigmoid": logsigmoid(x),
    "exp": sp.exp(x),
    "log": sp.log(p),
    "tanh": sp.tanh(x),
    "square": x ** 2,
    "cube": x ** 3,
    "fourth": y ** 4,
    "inverse": n ** -1,
    "inverse_square": n ** -2,
    "sqrt": sp.sqrt(p),
    "rsqrt": 1 / sp.sqrt(p),
    "pow_three_halves": p ** sp.Rational(3, 2),
    "exp2": 2 ** x,
    "pow_float": p ** 0.7,
    "pow_symbolic": p ** (x / 10),
    "const_base_pow": sp.Integer(3) ** x,
    "rational": sp.Rational(3, 7) * x + sp.Rational(-5, 11),
    "negation": -x,
    "neg_product": -x * y,
    "sum_and_product": 2 * x * y - y / 3 + 1,
    "nested": sp.exp(-x ** 2) * sigmoid(y) + softplus(x - y),
    "tanh_mix": sp.tanh(x) * sigmoid(y) - logsigmoid(-x),
    "mamba_gate": -sp.exp(y) * softplus(x + y),
    "lower_bound_gate": lb * sigmoid(sp.exp(y / 4) * (x + y)),
    "two_sigmoid": 2 * sigmoid(x),
    "log_of_sum": sp.log(1 + p),
    "softplus_squared": softplus(x) ** 2,
    "constant": sp.Rational(1, 3),
    "log_const": sp.log(2),
}


def _values(seed: int = 0, size: int = 64) -> dict[str, torch.Tensor]:
    """Random float64 points, with the large |x| stability points ±30, ±50 at the end (avoiding
    20 < x < 30, where F.softplus itself switches to its linear threshold and is the inaccurate one)."""
    gen = torch.Generator().manual_seed(seed)
    big = _t([50.0, -50.0, 30.0, -30.0, 0.0])

    def real(scale):
        return torch.cat([(torch.randn(size, generator=gen, dtype=F64) * scale).clamp(-8, 8), big])

    nz = torch.randn(size + len(big), generator=gen, dtype=F64)
    nz = torch.where(nz.abs() < 0.1, nz.sign() * 0.1 + nz, nz)
    nz[nz == 0] = 0.5
    vals = {
        "x": real(3.0), "y": real(2.0),
        "p": torch.exp(torch.randn(size + len(big), generator=gen, dtype=F64) * 2),
        "n": nz,
        "lower_bound": -5.0 * torch.rand(size + len(big), generator=gen, dtype=F64) - 0.1,
    }
    return vals


NAMES = {"x": "v_x", "y": "v_y", "p": "v_p", "n": "v_n", "lower_bound": "v_lb", "head_index": "v_h"}


@pytest.mark.parametrize("case", sorted(PRINT_CASES))
def test_print_triton_matches_sympy(case):
    expr = PRINT_CASES[case]
    vals = _values()
    text, helpers = printer.print_triton(expr, NAMES)
    assert helpers <= set(printer.HELPERS)
    ns = _namespace(vals, NAMES)
    ours = _t(eval(text, ns))
    ref = _reference_value(expr, vals, vals["x"])
    if ours.dim() == 0:
        ours = ours.expand_as(ref)
    assert torch.isfinite(ref).all(), case
    assert torch.isfinite(ours).all(), f"{case}: {text} is not finite"
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL, msg=lambda m: f"{case}: {text}\n{m}")


def test_print_triton_reports_helpers_it_uses():
    assert printer.print_triton(softplus(x), NAMES)[1] == {"_softplus"}
    assert printer.print_triton(logsigmoid(x) + sp.tanh(y), NAMES)[1] == {"_logsigmoid", "_tanh"}
    assert printer.print_triton(sigmoid(x) * sp.exp(y), NAMES)[1] == set()


def test_print_triton_rejects_unknown_symbols_and_functions():
    with pytest.raises(printer.PrintError, match="z"):
        printer.print_triton(x + sp.Symbol("z"), NAMES)
    with pytest.raises(printer.PrintError, match="sin"):
        printer.print_triton(sp.sin(x), NAMES)


def test_print_triton_high_integer_power_of_negative_base():
    vals = {"x": _t([-2.0, -0.5, 1.5])}
    for expr in (x ** 5, x ** 6, x ** -5):
        text, _ = printer.print_triton(expr, NAMES)
        ours = _t(eval(text, _namespace(vals, NAMES)))
        torch.testing.assert_close(ours, _reference_value(expr, vals, vals["x"]), rtol=RTOL, atol=ATOL)


def test_print_triton_number_symbols():
    vals = _values()
    for expr in (sp.pi * x, x * sp.exp(1)):
        text, _ = printer.print_triton(expr, NAMES)
        ours = _t(eval(text, _namespace(vals, NAMES)))
        torch.testing.assert_close(ours, _reference_value(expr, vals, vals["x"]), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("v", [-1000.0, -100.0, -50.0, -20.0, -1.0, 0.0, 1.0, 20.0, 50.0, 100.0, 1000.0])
def test_softplus_logsigmoid_helpers_are_stable(v):
    ns = _namespace({"x": _t([v])}, NAMES)
    sp_val = _t(eval(printer.print_triton(softplus(x), NAMES)[0], ns))
    ls_val = _t(eval(printer.print_triton(logsigmoid(x), NAMES)[0], ns))
    assert torch.isfinite(sp_val).all() and torch.isfinite(ls_val).all()
    torch.testing.assert_close(sp_val, F.softplus(_t([v])), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(ls_val, F.logsigmoid(_t([v])), rtol=RTOL, atol=ATOL)
    assert (sp_val >= 0).all() and (ls_val <= 0).all()


def _spec_exprs():
    out = []
    for name in ALL_SPECS:
        spec = BUILTINS[name]
        for field in ("gate", "beta"):
            expr = getattr(spec, field)
            if expr is not None:
                out.append(pytest.param(spec, field, expr, id=f"{name}-{field}"))
    return out


def _spec_values(spec, seed=0, size=32):
    gen = torch.Generator().manual_seed(seed)
    vals = {}
    for i in spec.inputs:
        if i.shape is Shape.CONST:
            vals[i.name] = -5.0 * torch.rand(size, generator=gen, dtype=F64) - 0.1
        else:
            vals[i.name] = torch.randn(size, generator=gen, dtype=F64) * 1.5
    vals["head_index"] = torch.arange(size, dtype=F64) % 8
    return vals


def _spec_names(spec):
    names = {i.name: f"b_{i.name}" for i in spec.inputs}
    names["head_index"] = "b_head_index"
    return names


@pytest.mark.parametrize("spec,field,expr", _spec_exprs())
def test_builtin_parametrisations_print_and_lower(spec, field, expr):
    """Each built-in gate and beta, printed directly and through CSE (``lower``), evaluates to sympy's
    value; so do the derivative blocks render.context emits (assignments in order)."""
    vals = _spec_values(spec)
    names = _spec_names(spec)
    like = vals["head_index"]
    ref = _reference_value(expr, vals, like)
    text, _ = printer.print_triton(expr, names)
    ours = _t(eval(text, _namespace(vals, names)))
    torch.testing.assert_close(ours.expand_as(ref), ref, rtol=RTOL, atol=ATOL)

    wrt = [s for s in sorted(expr.free_symbols, key=lambda s: s.name)
           if s != head_index and spec.input(s.name).shape is not Shape.CONST]
    exprs = [expr] + printer.derivatives(expr, wrt)
    assigns, results, _ = printer.lower(exprs, names, "b_t")
    ns = _namespace(vals, names)
    for var, val in assigns:
        ns[var] = eval(val, ns)
    for e, r in zip(exprs, results):
        torch.testing.assert_close(_t(eval(r, ns)).expand_as(like), _reference_value(e, vals, like),
                                   rtol=RTOL, atol=ATOL, msg=lambda m: f"{e}: {r}\n{m}")

    # what the templates actually emit for this expression
    ctx = render.context(spec)[field]
    ns = _namespace(vals, names)
    for var, val in ctx["assign"]:
        ns[var] = eval(val, ns)
    torch.testing.assert_close(_t(eval(ctx["value"], ns)).expand_as(like), ref, rtol=RTOL, atol=ATOL)
    ns = _namespace(vals, names)
    for var, val in ctx["dassign"]:
        ns[var] = eval(val, ns)
    assert set(ctx["dvars"]) == {s.name for s in wrt}
    for s in wrt:
        got = _t(ns[ctx["dvars"][s.name]]).expand_as(like)
        torch.testing.assert_close(got, _reference_value(sp.diff(expr, s), vals, like), rtol=RTOL, atol=ATOL)


def test_derivative_variables_do_not_collide_with_cse_temporaries():
    x0, yy = sp.symbols("x0 y", real=True)
    spec = Recurrence(name="collide", inputs=(Input("x0", Shape.HEAD), Input("y", Shape.TOKEN)),
                      decay=Decay.SCALAR, gate=-sp.exp(x0) * softplus(yy))
    vals = {"x0": _t([0.3, -0.7]), "y": _t([1.1, -2.0])}
    names = _spec_names(spec)
    ctx = render.context(spec)["gate"]
    ns = _namespace(vals, names)
    for var, val in ctx["dassign"]:
        ns[var] = eval(val, ns)
    for s in (x0, yy):
        got = _t(ns[ctx["dvars"][s.name]])
        torch.testing.assert_close(got, _reference_value(sp.diff(spec.gate, s), vals, vals["y"]),
                                   rtol=RTOL, atol=ATOL)


def test_lower_shares_subexpressions():
    e1 = sigmoid(x + y) * sp.exp(x + y)
    e2 = sigmoid(x + y) + 1
    assigns, results, _ = printer.lower([e1, e2], NAMES, "b_q")
    assert assigns, "CSE found nothing to share"
    assert all(var.startswith("b_q_x") for var, _ in assigns)
    vals = _values()
    ns = _namespace(vals, NAMES)
    for var, val in assigns:
        ns[var] = eval(val, ns)
    for e, r in zip((e1, e2), results):
        torch.testing.assert_close(_t(eval(r, ns)), _reference_value(e, vals, vals["x"]), rtol=RTOL, atol=ATOL)


# --- sympy derivatives vs finite differences ----------------------------------------------------

def _fd_cases():
    out = []
    for name in ALL_SPECS:
        spec = BUILTINS[name]
        for field in ("gate", "beta"):
            expr = getattr(spec, field)
            if expr is None:
                continue
            for s in sorted(expr.free_symbols, key=lambda s: s.name):
                if s != head_index and spec.input(s.name).shape is not Shape.CONST:
                    out.append(pytest.param(name, field, s.name, id=f"{name}-{field}-d{s.name}"))
    return out


@pytest.mark.parametrize("name,field,symname", _fd_cases())
def test_derivatives_match_finite_differences(name, field, symname):
    spec = BUILTINS[name]
    expr = getattr(spec, field)
    sym = spec.input(symname).symbol
    syms = [i.symbol for i in spec.inputs] + [head_index]
    f = _lambdify(syms, expr)
    (d,) = printer.derivatives(expr, [sym])
    df = _lambdify(syms, d)
    vals = _spec_values(spec, seed=zlib.crc32(symname.encode()) % 1000)
    args = [vals[s.name] for s in syms]
    like = vals["head_index"]
    idx = syms.index(sym)
    h = 1e-6
    plus, minus = list(args), list(args)
    plus[idx] = args[idx] + h
    minus[idx] = args[idx] - h
    fd = (_t(f(*plus)) - _t(f(*minus))) / (2 * h)
    exact = _t(df(*args))
    torch.testing.assert_close(exact.expand_as(like), fd.expand_as(like), rtol=1e-6, atol=1e-8)


def test_every_builtin_with_inputs_has_derivative_cases():
    covered = {c.values[0] for c in _fd_cases()}
    for name, spec in BUILTINS.items():
        differentiable = [i for i in spec.inputs if i.shape is not Shape.CONST
                          and i.name not in ({"a", "b"} if spec.low_rank else set()) | ({"u"} if spec.bonus else set())]
        assert (name in covered) == bool(differentiable), name


# --- spec validation --------------------------------------------------------------------------

g_, beta_, z_ = sp.Symbol("g", real=True), sp.Symbol("beta", real=True), sp.Symbol("zz", real=True)
T_, TK_, H_, HK_, C_ = Shape.TOKEN, Shape.TOKEN_KEY, Shape.HEAD, Shape.HEAD_KEY, Shape.CONST

BAD_SPECS = {
    "unknown_symbol_in_gate": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_),), decay=Decay.SCALAR, gate=g_ + z_),
        ["gate", "zz"]),
    "scalar_decay_with_token_key_input": (
        lambda: Recurrence(name="s", inputs=(Input("g", TK_),), decay=Decay.SCALAR, gate=g_),
        ["gate", "scalar"]),
    "key_decay_with_scalar_gate": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_),), decay=Decay.KEY, gate=g_),
        ["gate"]),
    "decay_without_gate": (
        lambda: Recurrence(name="s", inputs=(), decay=Decay.SCALAR),
        ["gate"]),
    "gate_without_decay": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_),), gate=g_),
        ["gate"]),
    "delta_without_beta": (
        lambda: Recurrence(name="s", delta=True),
        ["beta"]),
    "beta_without_delta": (
        lambda: Recurrence(name="s", inputs=(Input("beta", T_),), beta=beta_),
        ["beta"]),
    "low_rank_with_delta": (
        lambda: Recurrence(name="s", inputs=(Input("a", TK_), Input("b", TK_), Input("beta", T_)),
                           low_rank=True, delta=True, beta=beta_),
        ["low_rank"]),
    "low_rank_missing_a": (
        lambda: Recurrence(name="s", inputs=(Input("b", TK_),), low_rank=True),
        ["inputs", "'a'", "low_rank"]),
    "low_rank_a_wrong_shape": (
        lambda: Recurrence(name="s", inputs=(Input("a", T_), Input("b", TK_)), low_rank=True),
        ["'a'", "token_key"]),
    "exclusive_readout_without_u": (
        lambda: Recurrence(name="s", inputs=(Input("g", TK_),), decay=Decay.KEY, gate=g_,
                           readout=Readout.EXCLUSIVE_BONUS),
        ["'u'", "readout"]),
    "unsupported_function": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_),), decay=Decay.SCALAR, gate=sp.sin(g_)),
        ["gate", "sin"]),
    "unsupported_construct": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_),), decay=Decay.SCALAR, gate=-sp.Abs(g_)),
        ["gate", "Abs"]),
    "unused_input": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_), Input("extra", H_)), decay=Decay.SCALAR, gate=g_),
        ["inputs", "unused", "extra"]),
    "duplicate_names": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_), Input("g", T_)), decay=Decay.SCALAR, gate=g_),
        ["inputs", "duplicate", "g"]),
    "normalize_with_decay": (
        lambda: Recurrence(name="s", inputs=(Input("g", T_),), decay=Decay.SCALAR, gate=g_, normalize=True),
        ["normalize"]),
    "head_index_in_beta": (
        lambda: Recurrence(name="s", inputs=(Input("beta", T_),), delta=True, beta=beta_ * head_index),
        ["beta", "head_index"]),
    "structural_input_in_gate": (
        lambda: Recurrence(name="s", inputs=(Input("g", TK_), Input("u", HK_)), decay=Decay.KEY, gate=g_ + sp.Symbol("u", real=True),
                           readout=Readout.EXCLUSIVE_BONUS),
        ["gate", "u"]),
    "bad_name": (
        lambda: Recurrence(name="not an identifier"),
        ["name"]),
    "decay_not_an_enum": (
        lambda: Recurrence(name="s", decay="scalar"),
        ["decay"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_spec_validation_names_the_field(case):
    make, words = BAD_SPECS[case]
    with pytest.raises(SpecError) as info:
        make()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"


def test_non_input_entries_raise_spec_error():
    with pytest.raises(SpecError, match="inputs"):
        Recurrence(name="s", inputs=(("g", T_),), decay=Decay.SCALAR, gate=g_)


@pytest.mark.parametrize("name", ["scale", "q", "k", "v", "T", "state", "b_x", "grad_g", "gate_x", "LOG2E", "tl"])
def test_reserved_input_names_are_rejected_at_input(name):
    with pytest.raises(SpecError, match="reserved"):
        Input(name, Shape.TOKEN)


@pytest.mark.parametrize("name", ["range", "_softplus", "_logsigmoid", "_tanh"])
def test_names_kernels_resolve_are_reserved(name):
    with pytest.raises(SpecError, match="reserved"):
        Input(name, Shape.TOKEN)


@pytest.mark.parametrize("name", ["1g", "not-an-id", "class", ""])
def test_invalid_input_identifiers_are_rejected(name):
    with pytest.raises(SpecError, match="inputs"):
        Input(name, Shape.TOKEN)


def test_input_shape_must_be_a_shape():
    with pytest.raises(SpecError, match="shape"):
        Input("g", "token")


def test_spec_errors_are_value_errors_and_replace_revalidates():
    assert issubclass(SpecError, ValueError)
    spec = BUILTINS["gated_delta_rule"]
    with pytest.raises(SpecError, match="beta"):
        spec.replace(beta=None)
    with pytest.raises(SpecError, match="normalize"):
        spec.replace(normalize=True)


def test_valid_user_spec_renders_and_compiles(tmp_cache):
    """The positive control of the validation tests: a new spec in the same vocabulary is accepted,
    renders, and runs."""
    gg, aa = sp.symbols("g A_log", real=True)
    spec = Recurrence(name="user_gate", inputs=(Input("g", T_), Input("A_log", H_)), decay=Decay.SCALAR,
                      gate=-sp.exp(aa) * sigmoid(gg) ** 2)
    src = render.render(spec)
    compile(src, "user_gate.py", "exec")
    op = flagen.compile(spec)
    gen = torch.Generator().manual_seed(3)
    B, T, H, K, V = 1, 4, 1, 8, 4
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    g = torch.randn(B, T, H, generator=gen)
    A_log = torch.randn(H, generator=gen)
    o, _ = op(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), g=g.to(DEVICE), A_log=A_log.to(DEVICE))
    from flagen import reference
    ro, _ = reference.run(spec, q, k, v, g=g, A_log=A_log)
    torch.testing.assert_close(o.cpu().double(), ro, rtol=1e-4, atol=1e-4)


def test_fla_option_names_are_builtins():
    """Every option combination the fla wrappers accept names a built-in variant (the wrappers
    spell the library's naming rule without importing the IR, so the two must agree)."""
    import itertools

    from fla.ops._entry import beta_option, variant_name
    for l2, gate, (sig, neg) in itertools.product(
            (False, True), ("", "_gate"), ((False, False), (True, False), (True, True))):
        assert variant_name("gated_delta_rule", l2, gate, beta_option(sig, neg)) in BUILTINS
    for l2, gate, (sig, neg) in itertools.product(
            (False, True), ("", "_gate", "_gate_lower_bound"), ((False, False), (True, False), (True, True))):
        assert variant_name("kda", l2, gate, beta_option(sig, neg)) in BUILTINS
    for l2 in (False, True):
        assert variant_name("delta_rule", l2) in BUILTINS
