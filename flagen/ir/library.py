"""The built-in recurrences: every model family's spec, in one place.

A family may come in several variants, one per combination of its FLA options that changes
the kernel (for example in-kernel L2 normalisation of q and k, or an in-kernel gate
parametrisation). :func:`variant` maps a family and its options to the spec;
:data:`BUILTINS` lists every built-in variant by name, which is what ``flagen build``
renders into ``generated/``.
"""

from __future__ import annotations

import itertools

import sympy as sp

from flagen.ir.functions import logsigmoid, sigmoid, softplus
from flagen.ir.spec import Decay, Input, Readout, Recurrence, Shape, SpecError, head_index

T, TK, H, HK, C = Shape.TOKEN, Shape.TOKEN_KEY, Shape.HEAD, Shape.HEAD_KEY, Shape.CONST


def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


g, beta, w, u, a, b, gk = (_sym(n) for n in ("g", "beta", "w", "u", "a", "b", "gk"))
A_log, dt_bias, g_gamma, lower_bound, f = (_sym(n) for n in ("A_log", "dt_bias", "g_gamma", "lower_bound", "f"))


def _beta(option: str | None) -> tuple[sp.Expr, str]:
    """beta as given, sigmoid(beta), or 2*sigmoid(beta) (negative eigenvalues allowed)."""
    if option is None:
        return beta, ""
    if option == "sigmoid":
        return sigmoid(beta), "_beta_sigmoid"
    if option == "2sigmoid":
        return 2 * sigmoid(beta), "_beta_2sigmoid"
    raise SpecError(f"beta option must be None, 'sigmoid' or '2sigmoid', got {option!r}")


def _l2(qk_l2norm: bool) -> str:
    return "_l2norm" if qk_l2norm else ""


def linear_attn(normalize: bool = False) -> Recurrence:
    return Recurrence(
        name="linear_attn" + ("_normalized" if normalize else ""),
        normalize=normalize,
        doc="S_t = S_{t-1} + k_t v_t^T; o_t = scale S_t^T q_t (optionally / scale q_t^T sum_{s<=t} k_s)",
    )


def retention() -> Recurrence:
    return Recurrence(
        name="retention",
        decay=Decay.SCALAR,
        gate=sp.log(1 - sp.Integer(2) ** (-5 - head_index)),
        doc="RetNet: S_t = gamma_h S_{t-1} + k_t v_t^T, gamma_h = 1 - 2^(-5-h)",
    )


def simple_gla(gate: str = "g") -> Recurrence:
    """``gate``: 'g' (per-token [B,T,HV]), 'g_gamma' (per-head constant [HV], also lightning
    attention), or 'mamba2' (g = -exp(A_log) * softplus(g + dt_bias))."""
    if gate == "g":
        return Recurrence(name="simple_gla", inputs=(Input("g", T),), decay=Decay.SCALAR, gate=g,
                          doc="S_t = exp(g_t) S_{t-1} + k_t v_t^T")
    if gate == "g_gamma":
        return Recurrence(name="simple_gla_gamma", inputs=(Input("g_gamma", H),), decay=Decay.SCALAR,
                          gate=g_gamma, doc="S_t = exp(g_gamma_h) S_{t-1} + k_t v_t^T")
    if gate == "mamba2":
        return Recurrence(name="mamba2", inputs=(Input("g", T), Input("A_log", H), Input("dt_bias", H)),
                          decay=Decay.SCALAR, gate=-sp.exp(A_log) * softplus(g + dt_bias),
                          doc="Mamba2 SSD decay: S_t = exp(-exp(A_log) softplus(g_t + dt_bias)) S_{t-1} + k_t v_t^T")
    raise SpecError(f"simple_gla gate must be 'g', 'g_gamma' or 'mamba2', got {gate!r}")


def gla() -> Recurrence:
    return Recurrence(name="gla", inputs=(Input("g", TK),), decay=Decay.KEY, gate=g,
                      doc="S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T")


def hgrn2() -> Recurrence:
    return Recurrence(name="hgrn2", inputs=(Input("f", TK),), decay=Decay.KEY, gate=logsigmoid(f),
                      doc="HGRN2: S_t = diag(sigmoid(f_t)) S_{t-1} + k_t v_t^T (k_t = 1 - sigmoid(f_t) by the layer)")


def rwkv6() -> Recurrence:
    return Recurrence(name="rwkv6", inputs=(Input("w", TK), Input("u", HK)), decay=Decay.KEY, gate=w,
                      readout=Readout.EXCLUSIVE_BONUS,
                      doc="S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T; o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T r_t")


def delta_rule(qk_l2norm: bool = False) -> Recurrence:
    return Recurrence(name="delta_rule" + _l2(qk_l2norm), inputs=(Input("beta", T),), delta=True, beta=beta,
                      qk_l2norm=qk_l2norm,
                      doc="S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T")


def gated_delta_rule(qk_l2norm: bool = False, gate_in_kernel: bool = False,
                     beta_activation: str | None = None) -> Recurrence:
    inputs = [Input("g", T), Input("beta", T)]
    gate_expr, suffix = g, ""
    if gate_in_kernel:
        inputs += [Input("A_log", H), Input("dt_bias", H)]
        gate_expr, suffix = -sp.exp(A_log) * softplus(g + dt_bias), "_gate"
    beta_expr, beta_suffix = _beta(beta_activation)
    return Recurrence(
        name="gated_delta_rule" + _l2(qk_l2norm) + suffix + beta_suffix,
        inputs=tuple(inputs), decay=Decay.SCALAR, gate=gate_expr, delta=True, beta=beta_expr,
        qk_l2norm=qk_l2norm,
        doc="S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T",
    )


def kda(qk_l2norm: bool = False, gate: str | None = None, beta_activation: str | None = None) -> Recurrence:
    """``gate``: None (g is the log decay), 'softplus' (-exp(A_log) softplus(g + dt_bias)) or
    'lower_bound' (lower_bound * sigmoid(exp(A_log) (g + dt_bias)), lower_bound < 0 per call)."""
    inputs = [Input("g", TK), Input("beta", T)]
    if gate is None:
        gate_expr, suffix = g, ""
    elif gate == "softplus":
        inputs += [Input("A_log", H), Input("dt_bias", HK)]
        gate_expr, suffix = -sp.exp(A_log) * softplus(g + dt_bias), "_gate"
    elif gate == "lower_bound":
        inputs += [Input("A_log", H), Input("dt_bias", HK), Input("lower_bound", C)]
        gate_expr, suffix = lower_bound * sigmoid(sp.exp(A_log) * (g + dt_bias)), "_gate_lower_bound"
    else:
        raise SpecError(f"kda gate must be None, 'softplus' or 'lower_bound', got {gate!r}")
    beta_expr, beta_suffix = _beta(beta_activation)
    return Recurrence(
        name="kda" + _l2(qk_l2norm) + suffix + beta_suffix,
        inputs=tuple(inputs), decay=Decay.KEY, gate=gate_expr, delta=True, beta=beta_expr, qk_l2norm=qk_l2norm,
        doc="S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T",
    )


def dplr() -> Recurrence:
    return Recurrence(name="dplr", inputs=(Input("gk", TK), Input("a", TK), Input("b", TK)),
                      decay=Decay.KEY, gate=gk, low_rank=True,
                      doc="S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T (RWKV7 with q=r, gk=w)")


def _all_builtins() -> dict[str, Recurrence]:
    specs = [linear_attn(), linear_attn(normalize=True), retention(), simple_gla("g"), simple_gla("g_gamma"),
             simple_gla("mamba2"), gla(), hgrn2(), rwkv6(), delta_rule(False), delta_rule(True), dplr()]
    for l2, gate_in, act in itertools.product((False, True), (False, True), (None, "sigmoid", "2sigmoid")):
        specs.append(gated_delta_rule(l2, gate_in, act))
    for l2, gate, act in itertools.product((False, True), (None, "softplus", "lower_bound"),
                                           (None, "sigmoid", "2sigmoid")):
        specs.append(kda(l2, gate, act))
    out = {}
    for s in specs:
        assert s.name not in out, s.name
        out[s.name] = s
    return out


BUILTINS: dict[str, Recurrence] = _all_builtins()
