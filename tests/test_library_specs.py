"""Every built-in spec of flagen/ir/library.py against an independent reference.

``flagen.reference.run`` interprets a spec by evaluating the spec's own sympy gate / beta
expressions, so on its own it cannot catch a wrong formula in the library. Here each built-in
is run through it and compared with tests/naive_refs.py, whose recurrences and
parametrisations are written by hand from the papers (no sympy, no flagen.ir). Pure PyTorch in
float64, no kernels.
"""

from __future__ import annotations

import itertools

import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import naive_refs as nr
from flagen import reference
from flagen.ir import functions as irf
from flagen.ir.library import BUILTINS
from flagen.ir.spec import head_index

DT = torch.float64
# Both sides compute in float64 with O(T K) terms of size O(1): they agree to ~1e-14. The stated
# tolerance, elementwise: |ours - naive| <= ATOL + RTOL * |naive|.
ATOL = RTOL = 1e-10


# --- inputs ---------------------------------------------------------------------------------------

class Case:
    """One shape: dense (B sequences of T tokens) or packed (B = 1 with cu_seqlens)."""

    def __init__(self, B, T, H, HV, K, V, cu_seqlens=None, with_h0=False, scale=None):
        self.B, self.T, self.H, self.HV, self.K, self.V = B, T, H, HV, K, V
        self.cu_seqlens = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.long)
        self.N = B if cu_seqlens is None else len(cu_seqlens) - 1
        self.with_h0, self.scale = with_h0, scale


CASES = {
    # grouped value heads (G = 2), default scale, no initial state
    "dense": Case(B=2, T=9, H=1, HV=2, K=5, V=3),
    # packed: 4 sequences, one of them empty, H = 2 (G = 2, so the head mapping matters),
    # an initial state and an explicit scale
    "varlen": Case(B=1, T=13, H=2, HV=4, K=4, V=3, cu_seqlens=[0, 4, 4, 11, 13], with_h0=True, scale=0.7),
}


class Gen:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.g, dtype=DT) * scale

    def rand(self, *shape):
        return torch.rand(*shape, generator=self.g, dtype=DT)

    def log_decay(self, *shape):
        """Log decays in [-5, -1e-3]."""
        return (-5.0 * self.rand(*shape)).clamp(max=-1e-3)

    def A_log(self, HV):
        """A = exp(A_log) in [1, 16], as Mamba2 initialises it."""
        return torch.log(1.0 + 15.0 * self.rand(HV))


def make_inputs(family: str, opts: dict, c: Case, seed: int):
    """(q, k, v, initial_state, spec inputs, naive keyword arguments) for one family."""
    gen = Gen(seed)
    B, T, H, HV, K, V = c.B, c.T, c.H, c.HV, c.K, c.V
    tok, tokk = (B, T, HV), (B, T, HV, K)
    q, k, v = gen.randn(B, T, H, K), gen.randn(B, T, H, K), gen.randn(B, T, HV, V)
    h0 = gen.randn(c.N, HV, K, V, scale=0.5) if c.with_h0 else None
    spec_in, naive_kw = {}, {}
    if family == "linear_attn":
        if opts["normalize"]:
            q, k = F.elu(q) + 1, F.elu(k) + 1          # positive feature maps: denominators away from 0
            if h0 is not None:
                h0 = (h0, gen.rand(c.N, HV, K) + 0.5)  # (S0, z0), z0 > 0
        naive_kw["normalize"] = opts["normalize"]
    elif family == "retention":
        pass
    elif family == "simple_gla":
        if opts["gate"] == "g":
            spec_in["g"] = naive_kw["g"] = gen.log_decay(*tok)
        else:
            spec_in["g_gamma"] = naive_kw["g_gamma"] = gen.log_decay(HV)
    elif family == "mamba2":
        spec_in = dict(g=gen.randn(*tok), A_log=gen.A_log(HV), dt_bias=gen.randn(HV, scale=0.5))
        naive_kw = dict(spec_in)
    elif family == "gla":
        spec_in["g"] = naive_kw["g"] = gen.log_decay(*tokk)
    elif family == "hgrn2":
        spec_in["f"] = naive_kw["f"] = gen.randn(*tokk, scale=2.0)
    elif family == "rwkv6":
        spec_in = dict(w=gen.log_decay(*tokk), u=gen.randn(HV, K))
        naive_kw = dict(spec_in)
    elif family in ("delta_rule", "gated_delta_rule", "kda"):
        l2 = opts["l2norm"]
        if not l2:
            k = F.normalize(k, dim=-1)                 # unit keys keep I - beta k k^T a contraction
        act = opts.get("beta")
        spec_in["beta"] = gen.rand(*tok) if act is None else gen.randn(*tok, scale=2.0)
        naive_kw = dict(beta=spec_in["beta"], use_qk_l2norm_in_kernel=l2)
        if family == "gated_delta_rule":
            naive_kw["beta_activation"] = act
            if opts["gate"]:
                spec_in.update(g=gen.randn(*tok), A_log=gen.A_log(HV), dt_bias=gen.randn(HV, scale=0.5))
                naive_kw.update(use_gate_in_kernel=True, A_log=spec_in["A_log"], dt_bias=spec_in["dt_bias"])
            else:
                spec_in["g"] = gen.log_decay(*tok)
            naive_kw["g"] = spec_in["g"]
        elif family == "kda":
            naive_kw["beta_activation"] = act
            gate = opts["gate"]
            if gate is None:
                spec_in["g"] = gen.log_decay(*tokk)
            else:
                spec_in.update(g=gen.randn(*tokk), A_log=gen.A_log(HV), dt_bias=gen.randn(HV, K, scale=0.5))
                naive_kw.update(use_gate_in_kernel=True, A_log=spec_in["A_log"], dt_bias=spec_in["dt_bias"])
                if gate == "lower_bound":
                    spec_in["lower_bound"] = naive_kw["lower_bound"] = -5.0
            naive_kw["g"] = spec_in["g"]
    elif family == "dplr":
        kk = F.normalize(gen.randn(*tokk), dim=-1)
        spec_in = dict(gk=gen.log_decay(*tokk), a=-kk, b=kk * gen.rand(*tok, 1))   # RWKV7's a, b
        naive_kw = dict(spec_in)
    else:
        raise KeyError(family)
    return q, k, v, h0, spec_in, naive_kw


# --- the independent reference of every built-in, by name -----------------------------------------

_BETA_SUFFIX = {None: "", "sigmoid": "_beta_sigmoid", "2sigmoid": "_beta_2sigmoid"}
_L2_SUFFIX = {False: "", True: "_l2norm"}


def _naive_table():
    """name -> (family, options, naive function). Names spelled from the families' options, not
    read off the specs, so every built-in has to be matched by hand."""
    t = {
        "linear_attn": ("linear_attn", {"normalize": False}, nr.naive_linear_attn),
        "linear_attn_normalized": ("linear_attn", {"normalize": True}, nr.naive_linear_attn),
        "retention": ("retention", {}, nr.naive_retention),
        "simple_gla": ("simple_gla", {"gate": "g"}, nr.naive_simple_gla),
        "simple_gla_gamma": ("simple_gla", {"gate": "g_gamma"}, nr.naive_simple_gla),
        "mamba2": ("mamba2", {}, nr.naive_mamba2),
        "gla": ("gla", {}, nr.naive_gla),
        "hgrn2": ("hgrn2", {}, nr.naive_hgrn2),
        "rwkv6": ("rwkv6", {}, nr.naive_rwkv6),
        "dplr": ("dplr", {}, nr.naive_dplr),
    }
    for l2 in (False, True):
        t["delta_rule" + _L2_SUFFIX[l2]] = ("delta_rule", {"l2norm": l2}, nr.naive_delta_rule)
    for l2, gate, act in itertools.product((False, True), (False, True), (None, "sigmoid", "2sigmoid")):
        name = "gated_delta_rule" + _L2_SUFFIX[l2] + ("_gate" if gate else "") + _BETA_SUFFIX[act]
        t[name] = ("gated_delta_rule", {"l2norm": l2, "gate": gate, "beta": act}, nr.naive_gated_delta_rule)
    kda_gate = {None: "", "softplus": "_gate", "lower_bound": "_gate_lower_bound"}
    for l2, gate, act in itertools.product((False, True), (None, "softplus", "lower_bound"),
                                           (None, "sigmoid", "2sigmoid")):
        name = "kda" + _L2_SUFFIX[l2] + kda_gate[gate] + _BETA_SUFFIX[act]
        t[name] = ("kda", {"l2norm": l2, "gate": gate, "beta": act}, nr.naive_kda)
    return t


NAIVE = _naive_table()


def compare(spec, name: str, case: str, seed: int = 0):
    """Run ``spec`` through flagen.reference and the naive reference of built-in ``name``;
    returns the list of mismatching tensors as (label, max abs error, max |naive|)."""
    c = CASES[case]
    family, opts, fn = NAIVE[name]
    q, k, v, h0, spec_in, naive_kw = make_inputs(family, opts, c, seed)
    o_ref, s_ref = reference.run(spec, q, k, v, scale=c.scale, initial_state=h0, output_final_state=True,
                                 cu_seqlens=c.cu_seqlens, dtype=DT, **spec_in)
    o_nv, s_nv = fn(q, k, v, scale=c.scale, initial_state=h0, cu_seqlens=c.cu_seqlens, **naive_kw)
    pairs = [("o", o_ref, o_nv)]
    if isinstance(s_nv, tuple):
        assert isinstance(s_ref, tuple), "the reference should return the (S, z) pair"
        pairs += [("final_state.S", s_ref[0], s_nv[0]), ("final_state.z", s_ref[1], s_nv[1])]
    else:
        pairs.append(("final_state", s_ref, s_nv))
    bad = []
    for label, ours, naive in pairs:
        assert ours.shape == naive.shape, (label, ours.shape, naive.shape)
        assert torch.isfinite(naive).all(), label
        ok = ((ours - naive).abs() <= ATOL + RTOL * naive.abs()).all()
        if not ok:
            bad.append((label, (ours - naive).abs().max().item(), naive.abs().max().item()))
    return bad


# --- tests ---------------------------------------------------------------------------------------

def test_every_builtin_has_an_independent_reference():
    assert len(BUILTINS) == 42
    missing = sorted(set(BUILTINS) - set(NAIVE))
    extra = sorted(set(NAIVE) - set(BUILTINS))
    assert not missing, f"built-ins without an independent reference in tests/naive_refs.py: {missing}"
    assert not extra, f"references for names that are not built-ins: {extra}"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_matches_naive_reference(name, case):
    assert name in NAIVE, f"{name}: no independent reference"
    bad = compare(BUILTINS[name], name, case)
    assert not bad, f"{name} ({case}): spec and paper reference disagree: {bad}"


# --- the check can fail: deliberately wrong specs -------------------------------------------------

def _s(n):
    return sp.Symbol(n, real=True)


g, beta, f, A_log, dt_bias, lower_bound = (_s(n) for n in ("g", "beta", "f", "A_log", "dt_bias", "lower_bound"))

MUTANTS = {
    # RetNet gamma off by one in the exponent
    "retention: gamma 1 - 2^(-4-h)": ("retention", dict(gate=sp.log(1 - sp.Integer(2) ** (-4 - head_index)))),
    # Gated DeltaNet gate without dt_bias (the input dropped too: a spec may not declare unused inputs)
    "gated_delta_rule_gate: -exp(A_log) softplus(g)": (
        "gated_delta_rule_gate", lambda s: dict(gate=-sp.exp(A_log) * irf.softplus(g),
                                                inputs=tuple(i for i in s.inputs if i.name != "dt_bias"))),
    # Mamba2 with the sign of the decay flipped inside exp (A = exp(A_log) instead of -exp(A_log))
    "mamba2: -exp(-A_log) softplus(g + dt_bias)": (
        "mamba2", dict(gate=-sp.exp(-A_log) * irf.softplus(g + dt_bias))),
    # KDA lower-bound gate without exp on A_log
    "kda_gate_lower_bound: lower_bound sigmoid(A_log (g + dt_bias))": (
        "kda_gate_lower_bound", dict(gate=lower_bound * irf.sigmoid(A_log * (g + dt_bias)))),
    # beta activation: sigmoid where 2 sigmoid is meant
    "kda_l2norm_beta_2sigmoid: sigmoid(beta)": ("kda_l2norm_beta_2sigmoid", dict(beta=irf.sigmoid(beta))),
    # HGRN2: log decay log(1 - sigmoid(f)) instead of log sigmoid(f)
    "hgrn2: logsigmoid(-f)": ("hgrn2", dict(gate=irf.logsigmoid(-f))),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_wrong_spec_is_caught(mutant):
    name, changes = MUTANTS[mutant]
    base = BUILTINS[name]
    wrong = base.replace(**(changes(base) if callable(changes) else changes))
    assert wrong != base
    for case in CASES:
        bad = compare(wrong, name, case)
        assert bad and any(label == "o" for label, *_ in bad), f"{mutant} ({case}) was not caught"
