"""Inputs for every fla.ops recurrent entry point, and how they map onto the built-in spec that
the float64 reference interprets. Shared by the CPU tests and the GPU script."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fla.ops as ops
from flagen.ir.library import BUILTINS

DEVICE = os.environ.get("FLAGEN_TEST_DEVICE", "cpu")
# On the GPU the tests run bf16 q/k/v (gates and betas stay fp32); the interpreter runs fp32.
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
# Stated tolerances, per tensor: max |ours - reference| <= TOL * (max |reference| + 0.05).
# Relative to the tensor's largest value (in bf16 a tensor of size 1 is held to 2e-2 and one
# of size 0.05 to 2e-3), with a floor of 0.05 for tensors that are zero or nearly so while
# the terms that make them are of order 1 (the normaliser's dq and dk at T = 1 cancel
# exactly). fp32 kernels vs float64: TOL 1e-4. bf16 outputs and gradients are rounded to
# bf16 (relative step 2^-8) before comparison: TOL 2e-2. Final states are fp32 in both cases.
TOL = 2e-2 if DTYPE == torch.bfloat16 else 1e-4
STATE_TOL = 1e-3 if DTYPE == torch.bfloat16 else 1e-4
ATOL_FACTOR = 0.05
# bf16 inputs wherever the tests run (tests of bf16 on the CPU too)
BF16_TOL, BF16_STATE_TOL = 2e-2, 1e-3


@dataclass
class Shape:
    B: int
    T: int
    H: int
    HV: int
    K: int
    V: int


def _rand(*shape, gen, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(DEVICE, dtype)


def _log_decay(*shape, gen, strong):
    """Log gates in [-5, 0) when ``strong`` (the hazard), else mild ones in [-0.5, 0)."""
    lo = 5.0 if strong else 0.5
    return (-torch.rand(*shape, generator=gen, dtype=torch.float64) * lo).clamp(max=-1e-3).to(DEVICE, torch.float32)


def make_case(family: str, s: Shape, strong: bool, seed: int = 0):
    """(fla function, fla kwargs, variant name, reference-input map; see reference_inputs)."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, HV, K, V = s.B, s.T, s.H, s.HV, s.K, s.V
    q = _rand(B, T, H, K, gen=gen, dtype=DTYPE)
    k = _rand(B, T, H, K, gen=gen, dtype=DTYPE)
    v = _rand(B, T, HV, V, gen=gen, dtype=DTYPE)
    kn = F.normalize(k.double(), dim=-1).to(DTYPE)
    tok, tokk = (B, T, HV), (B, T, HV, K)
    beta = torch.rand(*tok, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
    if family == "retention":
        return ops.fused_recurrent_retention, dict(q=q, k=k, v=v), "retention", {}
    if family == "linear_attn":
        return ops.fused_recurrent_linear_attn, dict(q=q, k=k, v=v), "linear_attn", {}
    if family == "linear_attn_normalized":
        # positive feature maps, as normalised linear attention uses
        qp, kp = (F.elu(q.float()) + 1).to(DTYPE), (F.elu(k.float()) + 1).to(DTYPE)
        return (ops.fused_recurrent_linear_attn, dict(q=qp, k=kp, v=v, normalize=True), "linear_attn_normalized", {})
    if family == "simple_gla":
        g = _log_decay(*tok, gen=gen, strong=strong)
        return ops.fused_recurrent_simple_gla, dict(q=q, k=k, v=v, g=g), "simple_gla", {"g": "g"}
    if family == "simple_gla_gamma":
        g_gamma = _log_decay(HV, gen=gen, strong=strong)
        return (ops.fused_recurrent_simple_gla, dict(q=q, k=k, v=v, g_gamma=g_gamma), "simple_gla_gamma",
                {"g_gamma": "g_gamma"})
    if family == "gla":
        g = _log_decay(*tokk, gen=gen, strong=strong)
        return ops.fused_recurrent_gla, dict(q=q, k=k, v=v, gk=g), "gla", {"g": "gk"}
    if family == "rwkv6":
        w = _log_decay(*tokk, gen=gen, strong=strong)
        u = _rand(HV, K, gen=gen, dtype=torch.float32)
        return ops.fused_recurrent_rwkv6, dict(r=q, k=k, v=v, w=w, u=u), "rwkv6", {"w": "w", "u": "u"}
    if family == "delta_rule":
        return (ops.fused_recurrent_delta_rule, dict(q=q, k=kn, v=v, beta=beta), "delta_rule", {"beta": "beta"})
    if family == "delta_rule_l2norm":
        return (ops.fused_recurrent_delta_rule, dict(q=q, k=k, v=v, beta=beta, use_qk_l2norm_in_kernel=True),
                "delta_rule_l2norm", {"beta": "beta"})
    if family == "gated_delta_rule":
        g = _log_decay(*tok, gen=gen, strong=strong)
        return (ops.fused_recurrent_gated_delta_rule, dict(q=q, k=kn, v=v, g=g, beta=beta), "gated_delta_rule",
                {"g": "g", "beta": "beta"})
    if family == "gated_delta_rule_gate":
        # Mamba2-style gate and sigmoid beta in the kernel, with L2 norm and negative eigenvalues
        graw = _rand(*tok, gen=gen)
        A_log = torch.log(torch.rand(HV, generator=gen, dtype=torch.float64) * 15 + 1).to(DEVICE, torch.float32)
        dt_bias = _rand(HV, gen=gen, scale=0.5)
        braw = _rand(*tok, gen=gen)
        kw = dict(q=q, k=k, v=v, g=graw, beta=braw, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                  A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True)
        return (ops.fused_recurrent_gated_delta_rule, kw, "gated_delta_rule_l2norm_gate_beta_2sigmoid",
                {"g": "g", "beta": "beta", "A_log": "A_log", "dt_bias": "dt_bias"})
    if family == "kda":
        g = _log_decay(*tokk, gen=gen, strong=strong)
        return ops.fused_recurrent_kda, dict(q=q, k=kn, v=v, g=g, beta=beta), "kda", {"g": "g", "beta": "beta"}
    if family == "kda_gate":
        graw = _rand(*tokk, gen=gen)
        A_log = torch.log(torch.rand(HV, generator=gen, dtype=torch.float64) * 15 + 1).to(DEVICE, torch.float32)
        dt_bias = _rand(HV * K, gen=gen, scale=0.5)
        braw = _rand(*tok, gen=gen)
        kw = dict(q=q, k=k, v=v, g=graw, beta=braw, A_log=A_log, dt_bias=dt_bias, use_qk_l2norm_in_kernel=True,
                  use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True, lower_bound=-5.0)
        return (ops.fused_recurrent_kda, kw, "kda_l2norm_gate_lower_bound_beta_sigmoid",
                {"g": "g", "beta": "beta", "A_log": "A_log", "dt_bias": lambda kw: kw["dt_bias"].view(HV, K),
                 "lower_bound": -5.0})
    if family in ("dplr", "rwkv7"):
        gk = _log_decay(*tokk, gen=gen, strong=strong)
        kk = F.normalize(_rand(*tokk, gen=gen).double(), dim=-1)
        a = (-kk).to(DTYPE)
        b = (kk * torch.rand(*tok, 1, generator=gen, dtype=torch.float64).to(DEVICE)).to(DTYPE)
        ref = {"gk": "w" if family == "rwkv7" else "gk", "a": "a", "b": "b"}
        if family == "rwkv7":
            return (ops.fused_recurrent_rwkv7, dict(r=q, w=gk, k=k, v=v, a=a, b=b, output_final_state=False),
                    "dplr", ref)
        return ops.fused_recurrent_dplr_delta_rule, dict(q=q, k=k, v=v, a=a, b=b, gk=gk), "dplr", ref
    raise KeyError(family)


FAMILIES = ["retention", "linear_attn", "linear_attn_normalized", "simple_gla", "simple_gla_gamma", "gla", "rwkv6",
            "delta_rule", "delta_rule_l2norm", "gated_delta_rule", "gated_delta_rule_gate", "kda", "kda_gate",
            "dplr", "rwkv7"]

# The chunked entry point of each family that has one, and how its keyword arguments differ.
CHUNK_FAMILIES = ["retention", "linear_attn", "linear_attn_normalized", "simple_gla", "simple_gla_gamma", "gla",
                  "rwkv6", "delta_rule", "delta_rule_l2norm", "gated_delta_rule", "gated_delta_rule_gate", "kda",
                  "kda_gate", "dplr", "rwkv7"]


def chunked(family: str, fn, kwargs: dict):
    """(chunk_* function, its kwargs) for a case made by make_case."""
    name = {"linear_attn_normalized": "linear_attn", "simple_gla_gamma": "simple_gla", "delta_rule_l2norm": "delta_rule",
            "gated_delta_rule_gate": "gated_delta_rule", "kda_gate": "kda", "dplr": "dplr_delta_rule"}.get(family, family)
    kwargs = dict(kwargs)
    if family == "gla":
        kwargs["g"] = kwargs.pop("gk")
    return getattr(ops, f"chunk_{name}"), kwargs


def reference_inputs(kwargs: dict, ref_map: dict) -> dict:
    """The spec's raw inputs from the fla kwargs: each entry of ``ref_map`` is a kwargs key, a
    function of the kwargs, or a constant."""
    out = {}
    for name, x in ref_map.items():
        out[name] = kwargs[x] if isinstance(x, str) else x(kwargs) if callable(x) else x
    return out


def qkv(kwargs: dict):
    """q, k, v from fla kwargs (the RWKV entry points call q `r`)."""
    return kwargs.get("q", kwargs.get("r")), kwargs["k"], kwargs["v"]


def spec_of(variant: str):
    return BUILTINS[variant]
