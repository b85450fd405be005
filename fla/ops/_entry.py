"""What every `fused_recurrent_*` and `chunk_*` entry point shares: FLA's argument conventions
mapped onto a generated op (state layout, optional inputs, variable-length checks)."""

from __future__ import annotations

import torch

from flagen.runtime.op import get_op


def _run(call, q, k, v, inputs: dict, initial_state, state_v_first: bool, **options):
    """``call(q, k, v, initial_state=..., **inputs, **options)`` with ``state_v_first`` states
    [N, HV, V, K] on the way in and out."""
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    o, final_state = call(q, k, v, initial_state=initial_state, **inputs, **options)
    if state_v_first and final_state is not None:
        final_state = final_state.transpose(-1, -2).contiguous()
    return o, final_state


def fused_recurrent(variant: str, q, k, v, inputs: dict, scale=None, initial_state=None,
                    output_final_state=False, reverse=False, cu_seqlens=None, state_v_first=False):
    """Run built-in ``variant`` token by token."""
    return _run(get_op(variant), q, k, v, inputs, initial_state, state_v_first, scale=scale,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)


def chunk(variant: str, q, k, v, inputs: dict, scale=None, initial_state=None, output_final_state=False,
          cu_seqlens=None, state_v_first=False, chunk_size=None):
    """Run built-in ``variant`` through its chunked kernels (training and prefill)."""
    return _run(get_op(variant).chunk, q, k, v, inputs, initial_state, state_v_first, scale=scale,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)


def scalar_gate(g, g_gamma) -> tuple[str, dict]:
    """(variant, inputs) of simple GLA's gate options: a per-token ``g``, a per-head constant
    ``g_gamma``, or neither (plain linear attention)."""
    if g is not None and g_gamma is not None:
        raise ValueError("give at most one of `g` and `g_gamma`")
    if g is not None:
        return "simple_gla", {"g": g}
    if g_gamma is not None:
        return "simple_gla_gamma", {"g_gamma": g_gamma}
    return "linear_attn", {}


def linear_attn(entry, normalize: bool, q, k, v, scale, initial_state, output_final_state, *args, **kwargs):
    """Linear attention through ``entry`` (fused_recurrent or chunk). With ``normalize`` the
    states are FLA's pairs (S [N, HV, K, V], z [N, 1, HV, K]); the op's z is [N, HV, K]."""
    if normalize and isinstance(initial_state, tuple):
        s0, z0 = initial_state
        initial_state = (s0, z0.squeeze(1) if z0.dim() == 4 else z0)
    o, final_state = entry("linear_attn_normalized" if normalize else "linear_attn", q, k, v, {}, scale,
                           initial_state, output_final_state, *args, **kwargs)
    if normalize and final_state is not None:
        final_state = (final_state[0], final_state[1].unsqueeze(1))
    return o, final_state


def ones_like_heads(v: torch.Tensor, dtype=None) -> torch.Tensor:
    """A per-token, per-state-head tensor of ones [B, T, HV] (beta when none is given)."""
    return v.new_ones(v.shape[:3], dtype=dtype or v.dtype)


def unsupported(name: str, value, why: str):
    if value is not None and value is not False:
        raise NotImplementedError(f"`{name}` is not supported: {why}")


def beta_option(use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool) -> str | None:
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`")
    if not use_beta_sigmoid_in_kernel:
        return None
    return "2sigmoid" if allow_neg_eigval else "sigmoid"


def variant_name(base: str, qk_l2norm: bool = False, gate: str = "", beta: str | None = None) -> str:
    """The built-in variant's name (flagen.ir.library's naming): base[_l2norm][_gate...][_beta_...]."""
    return base + ("_l2norm" if qk_l2norm else "") + gate + (f"_beta_{beta}" if beta else "")
