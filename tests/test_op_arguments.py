"""The arguments of the ``fla.ops`` entry points: every parameter FLA 0.6.0 has (by name, the
positional ones in FLA's order; tests/records/fla060_op_signatures.json, recorded from the
wheels by tests/records/record_fla_signatures.py), unknown keywords raise TypeError naming
them, FLA parameters we cannot honour raise NotImplementedError, the ones we newly honour
(chunk_*'s ``state_v_first`` and ``reverse``, ``transpose_state_layout``, gated delta rule's
``g`` with ``gk``) agree with the recurrent forms, and bad gate arguments raise clear errors.

Kernels run in Triton's interpreter on the CPU (tests/conftest.py) at tiny shapes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fla.ops as ops

DEVICE = os.environ.get("FLAGEN_TEST_DEVICE", "cpu")
RECORD = json.loads((Path(__file__).parent / "records" / "fla060_op_signatures.json").read_text())
UPSTREAM = RECORD["ops"]
NAMES = list(ops.__all__)
CHUNK_NAMES = [n for n in NAMES if n.startswith("chunk_")]
POSITIONAL = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")
VARIADIC = ("VAR_POSITIONAL", "VAR_KEYWORD")

# Where our default differs from FLA 0.6.0's, on purpose (each documented in the docstring).
DEFAULT_DEVIATIONS = {
    ("chunk_linear_attn", "normalize"): "one default (False) for the chunked and the recurrent form",
    ("fused_recurrent_rwkv7", "scale"): "RWKV7's own convention, scale 1.0",
}
# Our keyword-only extras beyond FLA's parameters.
EXTRAS = {"reverse", "state_v_first", "chunk_size", "head_first", "transpose_state_layout"}

B, T, H, HV, K, V = 2, 6, 1, 2, 16, 8
# fp32 inputs: exact to rounding in the interpreter; on a GPU the chunked kernels' matmuls
# within a chunk run in tf32 (as FLA's do), so chunked and recurrent agree to about 1e-2
TOL = dict(rtol=1e-4, atol=1e-4) if DEVICE == "cpu" else dict(rtol=2e-2, atol=2e-2)


def _randn(*shape, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, torch.float32)


def _decay(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return (-torch.rand(*shape, generator=gen, dtype=torch.float64) * 0.5).clamp(max=-1e-3).to(DEVICE, torch.float32)


def _rand(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)


def make_args(name: str, seed: int = 0) -> dict:
    """Good keyword arguments for entry point ``name`` (without state options)."""
    q, k, v = _randn(B, T, H, K, seed=seed), _randn(B, T, H, K, seed=seed + 1), _randn(B, T, HV, V, seed=seed + 2)
    kn = F.normalize(k, dim=-1)
    tok, tokk = (B, T, HV), (B, T, HV, K)
    family = name.split("_", 2)[-1] if name.startswith("fused_recurrent_") else name[len("chunk_"):]
    if family in ("retention", "linear_attn"):
        return dict(q=q, k=k, v=v)
    if family == "simple_gla":
        return dict(q=q, k=k, v=v, g=_decay(*tok, seed=seed + 3))
    if family == "lightning_attn":
        return dict(q=q, k=k, v=v, layer_idx=1, num_layers=4)
    if family == "gla":
        return dict(q=q, k=k, v=v, **{"g" if name.startswith("chunk") else "gk": _decay(*tokk, seed=seed + 3)})
    if family == "rwkv6":
        return dict(r=q, k=k, v=v, w=_decay(*tokk, seed=seed + 3), u=_randn(HV, K, seed=seed + 4))
    if family == "delta_rule":
        return dict(q=q, k=kn, v=v, beta=_rand(*tok, seed=seed + 3))
    if family == "gated_delta_rule":
        return dict(q=q, k=kn, v=v, g=_decay(*tok, seed=seed + 3), beta=_rand(*tok, seed=seed + 4))
    if family == "kda":
        return dict(q=q, k=kn, v=v, g=_decay(*tokk, seed=seed + 3), beta=_rand(*tok, seed=seed + 4))
    if family in ("dplr_delta_rule", "rwkv7"):
        kk = F.normalize(_randn(*tokk, seed=seed + 3), dim=-1)
        a, b = -kk, kk * _rand(*tok, 1, seed=seed + 4)
        gk = _decay(*tokk, seed=seed + 5)
        if family == "rwkv7":
            return dict(r=q, w=gk, k=k, v=v, a=a, b=b)
        return dict(q=q, k=k, v=v, a=a, b=b, gk=gk)
    raise KeyError(name)


def _h0(seed=7, n=B):
    return _randn(n, HV, K, V, seed=seed)


def _close(name, ours, ref):
    if isinstance(ref, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(ref), name
        for i, (a, b) in enumerate(zip(ours, ref)):
            _close(f"{name}[{i}]", a, b)
        return
    torch.testing.assert_close(ours, ref, **TOL, msg=lambda m: f"{name}: {m}")


def _transpose_state(s):
    if isinstance(s, tuple):
        return (s[0].transpose(-1, -2), *s[1:])
    return s.transpose(-1, -2)


# --- signatures against the record ---------------------------------------------------------------

def test_record_covers_every_entry_point():
    assert RECORD["fla_version"] == "0.6.0"
    assert set(UPSTREAM) == set(NAMES)
    for name, entry in UPSTREAM.items():
        assert not entry.get("missing"), f"{name} is not in FLA 0.6.0"
        assert "fla.ops" in entry["exported_from"], name


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_fla(name):
    """Every FLA parameter by name (and every name FLA reads from **kwargs), FLA's positional
    order, FLA's defaults except the documented deviations, extras keyword-only, no **kwargs."""
    up = UPSTREAM[name]
    ours = inspect.signature(getattr(ops, name)).parameters
    assert not [p for p in ours.values() if p.kind.name in VARIADIC], f"{name} must not swallow arguments"
    up_params = [p for p in up["parameters"] if p["kind"] not in VARIADIC]
    assert [n for n, p in ours.items() if p.kind.name in POSITIONAL] == \
        [p["name"] for p in up_params if p["kind"] in POSITIONAL]
    missing = ({p["name"] for p in up_params} | set(up["kwargs_keys"])) - set(ours)
    assert not missing, f"{name} lacks FLA's {sorted(missing)}"
    for p in up_params:
        mine = ours[p["name"]]
        if "default" not in p:
            assert mine.default is inspect.Parameter.empty, f"{name}({p['name']}) is required in FLA"
        elif (name, p["name"]) not in DEFAULT_DEVIATIONS:
            assert repr(mine.default) == p["default"], f"{name}({p['name']}): FLA's default is {p['default']}"
    for n in set(ours) - {p["name"] for p in up_params}:
        assert n in EXTRAS | set(up["kwargs_keys"]) and ours[n].kind is inspect.Parameter.KEYWORD_ONLY, \
            f"{name}: extra `{n}`"


@pytest.mark.parametrize("name", NAMES)
def test_exported_where_fla_exports_it(name):
    for module in UPSTREAM[name]["exported_from"]:
        assert getattr(importlib.import_module(module), name) is getattr(ops, name), module


@pytest.mark.parametrize("name", CHUNK_NAMES)
def test_chunk_has_the_recurrent_state_options(name):
    """Every chunk_* takes state_v_first, and reverse where FLA's recurrent form of the family has it."""
    family = name[len("chunk_"):]
    rec = UPSTREAM.get(f"fused_recurrent_{family}") or RECORD["related"][f"fused_recurrent_{family}"]
    params = inspect.signature(getattr(ops, name)).parameters
    assert "state_v_first" in params
    if "reverse" in {p["name"] for p in rec["parameters"]}:
        assert "reverse" in params


# --- unknown and unsupported arguments -----------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_valid_call_succeeds(name):
    """The positive control of the TypeError / NotImplementedError tests below (head_first=False is fine)."""
    o, ht = getattr(ops, name)(**make_args(name), initial_state=_h0(), output_final_state=True, head_first=False)
    assert o.shape == (B, T, HV, V) and ht.shape == (B, HV, K, V)


@pytest.mark.parametrize("bad", ["initial_states", "use_qk_l2norm", "not_an_argument_xyz"])
@pytest.mark.parametrize("name", NAMES)
def test_unknown_keyword_raises_type_error(name, bad):
    with pytest.raises(TypeError, match=bad):
        getattr(ops, name)(**make_args(name), **{bad: _h0() if bad == "initial_states" else True})


def _lacking():
    """(entry, an argument neither FLA's form nor ours takes): reverse where no one has it,
    chunk_size on the recurrent forms."""
    out = [(n, "reverse") for n in NAMES if "reverse" not in inspect.signature(getattr(ops, n)).parameters]
    return out + [(n, "chunk_size") for n in NAMES if n.startswith("fused_recurrent_")]


@pytest.mark.parametrize("name,bad", _lacking())
def test_arguments_fla_lacks_raise_type_error(name, bad):
    with pytest.raises(TypeError, match=bad):
        getattr(ops, name)(**make_args(name), **{bad: 16 if bad == "chunk_size" else True})


@pytest.mark.parametrize("name", NAMES)
def test_head_first_true_is_not_implemented(name):
    with pytest.raises(NotImplementedError, match="head_first"):
        getattr(ops, name)(**make_args(name), head_first=True)


@pytest.mark.parametrize("name", ["fused_recurrent_gla", "fused_recurrent_gated_delta_rule"])
def test_gv_is_not_implemented(name):
    a = make_args(name)
    with pytest.raises(NotImplementedError, match="`gv`"):
        getattr(ops, name)(**a, gv=_decay(B, T, HV, V, seed=9))
    getattr(ops, name)(**a, gv=None)  # the default is fine


def test_per_value_beta_is_not_implemented():
    a = make_args("fused_recurrent_gated_delta_rule")
    a["beta"] = _rand(B, T, HV, V, seed=9)
    with pytest.raises(NotImplementedError, match="beta"):
        ops.fused_recurrent_gated_delta_rule(**a)


@pytest.mark.parametrize("name", ["chunk_simple_gla", "chunk_gla", "chunk_rwkv6"])
def test_cu_seqlens_cpu(name):
    a = {n: (x[:1] if torch.is_tensor(x) and x.dim() >= 3 else x) for n, x in make_args(name).items()}
    cu = torch.tensor([0, 2, T], dtype=torch.int32, device=DEVICE)
    ref = getattr(ops, name)(**a, cu_seqlens=cu)[0]
    _close("o", getattr(ops, name)(**a, cu_seqlens=cu, cu_seqlens_cpu=cu.cpu())[0], ref)
    with pytest.raises(ValueError, match="cu_seqlens_cpu"):
        getattr(ops, name)(**a, cu_seqlens_cpu=cu.cpu())
    with pytest.raises(ValueError, match="cu_seqlens_cpu"):
        getattr(ops, name)(**a, cu_seqlens=cu, cu_seqlens_cpu=cu[:2].cpu())


# --- options newly honoured ---------------------------------------------------------------------

def _recurrent_form(name: str, args: dict):
    """(fused_recurrent_* function, its kwargs) computing what chunk_* ``name`` computes."""
    family = name[len("chunk_"):]
    args = dict(args)
    if family == "gla":
        args["gk"] = args.pop("g")
    if family == "lightning_attn":
        layer_idx, num_layers = args.pop("layer_idx"), args.pop("num_layers")
        args["g_gamma"] = -(8 / HV * (1 - layer_idx / num_layers)) * torch.arange(HV, dtype=torch.float32, device=DEVICE)
        family = "simple_gla"
    return getattr(ops, f"fused_recurrent_{family}"), args


CHUNK_CASES = [(n, {}) for n in CHUNK_NAMES] + [("chunk_linear_attn", {"normalize": True})]


def _case_args(name, extra, seed=0):
    args = make_args(name, seed)
    if extra.get("normalize"):  # positive feature maps for the normaliser
        args["q"], args["k"] = F.elu(args["q"]) + 1, F.elu(args["k"]) + 1
    h0 = _h0(seed + 7)
    if extra.get("normalize"):
        h0 = (h0, _rand(B, 1, HV, K, seed=seed + 8))
    return {**args, **extra}, h0


@pytest.mark.parametrize("name,extra", CHUNK_CASES)
def test_chunk_state_v_first_agrees_with_recurrent(name, extra):
    """chunk_*(state_v_first=True) = fused_recurrent_*(state_v_first=True), and is the [N, HV, V, K]
    layout of the default one."""
    args, h0 = _case_args(name, extra)
    h0_vk = _transpose_state(h0)
    o, ht = getattr(ops, name)(**args, initial_state=h0_vk, output_final_state=True, state_v_first=True)
    rfn, rargs = _recurrent_form(name, args)
    ro, rht = rfn(**rargs, initial_state=h0_vk, output_final_state=True, state_v_first=True)
    _close("o", o, ro)
    _close("final_state", ht, rht)
    o_kv, ht_kv = getattr(ops, name)(**args, initial_state=h0, output_final_state=True)
    _close("o (K-first)", o, o_kv)
    _close("final_state (K-first)", ht, _transpose_state(ht_kv))


@pytest.mark.parametrize("name,extra", [(n, e) for n, e in CHUNK_CASES
                                        if "reverse" in inspect.signature(getattr(ops, n)).parameters])
def test_chunk_reverse_agrees_with_recurrent(name, extra):
    args, h0 = _case_args(name, extra, seed=20)
    o, ht = getattr(ops, name)(**args, initial_state=h0, output_final_state=True, reverse=True)
    rfn, rargs = _recurrent_form(name, args)
    ro, rht = rfn(**rargs, initial_state=h0, output_final_state=True, reverse=True)
    _close("o", o, ro)
    _close("final_state", ht, rht)
    fo = getattr(ops, name)(**args, initial_state=h0)[0]
    assert not torch.allclose(o, fo, **TOL), "reverse=True changed nothing"


def test_chunk_reverse_varlen():
    a = {n: x[:1] for n, x in make_args("chunk_gla", 30).items()}
    cu = torch.tensor([0, 2, T], dtype=torch.int32, device=DEVICE)
    h0 = _h0(31, n=2)
    o, ht = ops.chunk_gla(**a, initial_state=h0, output_final_state=True, cu_seqlens=cu, reverse=True)
    ro, rht = ops.fused_recurrent_gla(a["q"], a["k"], a["v"], gk=a["g"], initial_state=h0, output_final_state=True,
                                      cu_seqlens=cu, reverse=True)
    _close("o", o, ro)
    _close("final_state", ht, rht)


RECURRENT_V_FIRST = ["fused_recurrent_linear_attn", "fused_recurrent_rwkv6", "fused_recurrent_delta_rule",
                     "fused_recurrent_dplr_delta_rule", "fused_recurrent_rwkv7"]


@pytest.mark.parametrize("name", RECURRENT_V_FIRST)
def test_recurrent_state_v_first_extra(name):
    """state_v_first where FLA's recurrent form lacks it: the same results in [N, HV, V, K]."""
    fn, args, h0 = getattr(ops, name), make_args(name, 40), _h0(41)
    o, ht = fn(**args, initial_state=h0.transpose(-1, -2), output_final_state=True, state_v_first=True)
    ro, rht = fn(**args, initial_state=h0, output_final_state=True)
    _close("o", o, ro)
    _close("final_state", ht, rht.transpose(-1, -2))


def test_normalized_recurrent_state_v_first():
    args, h0 = _case_args("fused_recurrent_linear_attn", {"normalize": True}, seed=50)
    o, ht = ops.fused_recurrent_linear_attn(**args, initial_state=_transpose_state(h0), output_final_state=True,
                                            state_v_first=True)
    ro, rht = ops.fused_recurrent_linear_attn(**args, initial_state=h0, output_final_state=True)
    _close("o", o, ro)
    _close("final_state", ht, _transpose_state(rht))


@pytest.mark.parametrize("name", [n for n in NAMES if "transpose_state_layout" in UPSTREAM[n]["kwargs_keys"]])
def test_transpose_state_layout_is_state_v_first(name):
    """FLA's deprecated name: a DeprecationWarning, the same results, and not both at once."""
    fn, args, h0 = getattr(ops, name), make_args(name, 60), _h0(61).transpose(-1, -2)
    with pytest.warns(DeprecationWarning, match="transpose_state_layout"):
        o, ht = fn(**args, initial_state=h0, output_final_state=True, transpose_state_layout=True)
    ro, rht = fn(**args, initial_state=h0, output_final_state=True, state_v_first=True)
    _close("o", o, ro)
    _close("final_state", ht, rht)
    with pytest.raises(ValueError, match="transpose_state_layout"):
        fn(**args, state_v_first=True, transpose_state_layout=True)


def _gdn_gate(g, A_log, dt_bias):
    return -torch.exp(A_log) * F.softplus(g + dt_bias)


@pytest.mark.parametrize("gate", [False, True])
def test_gated_delta_rule_g_with_gk(gate):
    """g and gk together multiply their decays (as in FLA); the in-kernel gate acts on g only."""
    a = make_args("fused_recurrent_gated_delta_rule", 70)
    gk, h0 = _decay(B, T, HV, K, seed=72), _h0(73)
    kw = dict(initial_state=h0, output_final_state=True)
    if gate:
        A_log, dt_bias = _randn(HV, seed=74, scale=0.5), _randn(HV, seed=75, scale=0.5)
        graw = _randn(B, T, HV, seed=76)
        o, ht = ops.fused_recurrent_gated_delta_rule(**{**a, "g": graw}, gk=gk, use_gate_in_kernel=True,
                                                     A_log=A_log, dt_bias=dt_bias, **kw)
        g = _gdn_gate(graw, A_log, dt_bias)
        # the same gate in the kernel, without gk, as a control of _gdn_gate
        _close("o (g only)", ops.fused_recurrent_gated_delta_rule(**{**a, "g": graw}, use_gate_in_kernel=True,
                                                                  A_log=A_log, dt_bias=dt_bias, **kw)[0],
               ops.fused_recurrent_gated_delta_rule(**{**a, "g": g}, **kw)[0])
    else:
        o, ht = ops.fused_recurrent_gated_delta_rule(**a, gk=gk, **kw)
        g = a["g"]
    ro, rht = ops.fused_recurrent_kda(a["q"], a["k"], a["v"], gk + g[..., None], a["beta"], **kw)
    _close("o", o, ro)
    _close("final_state", ht, rht)
    with pytest.raises(ValueError, match="`g`"):  # the gate needs g, as in FLA
        ops.fused_recurrent_gated_delta_rule(**{**a, "g": None}, gk=gk, use_gate_in_kernel=True,
                                             A_log=_randn(HV, seed=74))


# --- clear errors from the entry points' own handling -------------------------------------------

def _kda_gate_args(seed=80):
    a = make_args("fused_recurrent_kda", seed)
    a["g"] = _randn(B, T, HV, K, seed=seed + 10)
    return dict(a, A_log=_randn(HV, seed=seed + 11, scale=0.5), dt_bias=_randn(HV, K, seed=seed + 12, scale=0.5),
                use_gate_in_kernel=True)


def test_kda_gate_valid_calls():
    """Positive controls: dt_bias [HV, K] and [HV * K] agree; lower_bound without A_log is
    lower_bound * sigmoid(g + dt_bias)."""
    a = _kda_gate_args()
    o = ops.fused_recurrent_kda(**a)[0]
    _close("o (flat dt_bias)", ops.fused_recurrent_kda(**{**a, "dt_bias": a["dt_bias"].flatten()})[0], o)
    lb = dict(a, A_log=None, lower_bound=-3.0)
    ref = dict(a, g=-3.0 * torch.sigmoid(a["g"] + a["dt_bias"]), use_gate_in_kernel=False, A_log=None, dt_bias=None)
    _close("o (lower_bound)", ops.fused_recurrent_kda(**lb)[0], ops.fused_recurrent_kda(**ref)[0])


@pytest.mark.parametrize("change,exc,pattern", [
    (dict(dt_bias=_randn(HV + 1, K, seed=1)), ValueError, r"`dt_bias` must have shape \[HV, K\] = \[2, 16\]"),
    (dict(dt_bias=_randn(HV, seed=1)), ValueError, r"`dt_bias` must have shape \[HV, K\]"),
    (dict(dt_bias=[0.0] * (HV * K)), TypeError, "`dt_bias`"),
    (dict(g=_randn(B, T, HV, seed=1)), ValueError, r"`g` must have shape \[B, T, HV, K\]"),
    (dict(A_log=_randn(HV, K, seed=1)), ValueError, r"`A_log` must have shape \[HV\] = \[2\]"),
    (dict(A_log=None), ValueError, "`A_log`"),
    (dict(lower_bound=1.0), ValueError, "`lower_bound` must be a negative"),
    (dict(lower_bound=0), ValueError, "`lower_bound` must be a negative"),
    (dict(lower_bound=float("nan")), ValueError, "`lower_bound` must be a negative"),
    (dict(lower_bound=float("-inf")), ValueError, "`lower_bound` must be a negative"),
    (dict(lower_bound="-5"), TypeError, "`lower_bound`"),
    (dict(lower_bound=torch.tensor(-5.0)), TypeError, "`lower_bound`"),
    (dict(use_gate_in_kernel=False), ValueError, "`A_log` takes effect only with `use_gate_in_kernel=True`"),
    (dict(use_gate_in_kernel=False, A_log=None, dt_bias=None, lower_bound=-5.0), ValueError,
     "`lower_bound` takes effect only"),
])
def test_kda_gate_errors(change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.fused_recurrent_kda(**{**_kda_gate_args(), **change})


def _gdn_gate_args(seed=90):
    a = make_args("fused_recurrent_gated_delta_rule", seed)
    return dict(a, g=_randn(B, T, HV, seed=seed + 10), A_log=_randn(HV, seed=seed + 11, scale=0.5),
                dt_bias=_randn(HV, seed=seed + 12, scale=0.5), use_gate_in_kernel=True)


def test_gated_delta_rule_gate_valid_call():
    a = _gdn_gate_args()
    o = ops.fused_recurrent_gated_delta_rule(**a)[0]
    ref = dict(a, g=_gdn_gate(a["g"], a["A_log"], a["dt_bias"]), use_gate_in_kernel=False, A_log=None, dt_bias=None)
    _close("o", o, ops.fused_recurrent_gated_delta_rule(**ref)[0])
    ref0 = dict(ref, g=_gdn_gate(a["g"], a["A_log"], 0.0))  # dt_bias None means 0
    _close("o (no dt_bias)", ops.fused_recurrent_gated_delta_rule(**{**a, "dt_bias": None})[0],
           ops.fused_recurrent_gated_delta_rule(**ref0)[0])


@pytest.mark.parametrize("change,exc,pattern", [
    (dict(A_log=_randn(HV + 1, seed=1)), ValueError, r"`A_log` must have shape \[HV\] = \[2\]"),
    (dict(A_log=_randn(1, HV, seed=1)), ValueError, r"`A_log` must have shape \[HV\]"),
    (dict(A_log=1.0), TypeError, "`A_log`"),
    (dict(dt_bias=_randn(HV, K, seed=1)), ValueError, r"`dt_bias` must have shape \[HV\] = \[2\]"),
    (dict(g=_randn(B, T, HV, K, seed=1)), ValueError, r"`g` must have shape \[B, T, HV\]"),
    (dict(A_log=None), ValueError, "`A_log`"),
    (dict(g=None), ValueError, "`g`"),
    (dict(use_gate_in_kernel=False), ValueError, "`A_log` takes effect only with `use_gate_in_kernel=True`"),
    (dict(use_gate_in_kernel=False, A_log=None), ValueError, "`dt_bias` takes effect only"),
])
def test_gated_delta_rule_gate_errors(change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.fused_recurrent_gated_delta_rule(**{**_gdn_gate_args(), **change})


@pytest.mark.parametrize("change,exc,pattern", [
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(layer_idx=-1), ValueError, "layer_idx"),
    (dict(layer_idx=4), ValueError, "layer_idx"),
    (dict(layer_idx=1.5), TypeError, "`layer_idx`"),
    (dict(v=_randn(B, T, HV, seed=1)), ValueError, r"`v` must have shape \[B, T, HV, V\]"),
])
def test_lightning_attn_errors(change, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ops.chunk_lightning_attn(**{**make_args("chunk_lightning_attn"), **change})


@pytest.mark.parametrize("name", ["fused_recurrent_linear_attn", "chunk_linear_attn"])
def test_normalized_state_errors(name):
    args, (s0, z0) = _case_args(name, {"normalize": True})
    fn = getattr(ops, name)
    fn(**args, initial_state=(s0, z0.squeeze(1)))  # z [N, HV, K] is fine too
    with pytest.raises(ValueError, match=r"`initial_state\[1\]` \(z\) must have shape \[N, 1, HV, K\]"):
        fn(**args, initial_state=(s0, z0.expand(B, 2, HV, K)))
    with pytest.raises(ValueError, match="`initial_state`"):
        fn(**args, initial_state=(s0, z0, z0))
    with pytest.raises(TypeError, match=r"`initial_state\[1\]`"):
        fn(**args, initial_state=(s0, 1.0))


@pytest.mark.parametrize("name", ["fused_recurrent_retention", "chunk_gla"])
def test_state_v_first_bad_state(name):
    with pytest.raises(ValueError, match=r"`initial_state` must have shape \[N, HV, V, K\]"):
        getattr(ops, name)(**make_args(name), initial_state=_h0()[0], state_v_first=True)
    with pytest.raises(TypeError, match="`initial_state`"):
        getattr(ops, name)(**make_args(name), initial_state=[[0.0]], state_v_first=True)


@pytest.mark.parametrize("name", ["fused_recurrent_retention", "chunk_gla", "fused_recurrent_linear_attn"])
def test_state_v_first_wrong_layout_names_the_v_first_shape(name):
    """A K-first state [N, HV, K, V] (K != V) given with state_v_first=True: the error shows the
    [N, HV, V, K] shape wanted and the shape passed (not their transposes)."""
    with pytest.raises(ValueError, match=rf"\[N, HV, V, K\] = \({B}, {HV}, {V}, {K}\).*got \({B}, {HV}, {K}, {V}\)"):
        getattr(ops, name)(**make_args(name), initial_state=_h0(), state_v_first=True)


@pytest.mark.parametrize("name", ["fused_recurrent_delta_rule", "fused_recurrent_gated_delta_rule"])
def test_default_beta_needs_a_tensor_v(name):
    a = make_args(name)
    a["beta"] = None
    with pytest.raises(TypeError, match="`v`"):
        getattr(ops, name)(**{**a, "v": a["v"].tolist()})
    with pytest.raises(ValueError, match=r"`v` must have shape \[B, T, HV, V\]"):
        getattr(ops, name)(**{**a, "v": a["v"][0]})


def test_no_warning_without_deprecated_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ops.fused_recurrent_retention(**make_args("fused_recurrent_retention"), state_v_first=True)
