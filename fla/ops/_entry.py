"""What every `fused_recurrent_*` and `chunk_*` entry point shares: FLA's argument conventions
mapped onto a generated op (state layout, optional inputs, variable-length checks)."""

from __future__ import annotations

import torch

from flagen.runtime.op import DEFAULT_CHUNK_SIZE, get_op


def fused_recurrent(variant: str, q, k, v, inputs: dict, scale=None, initial_state=None,
                    output_final_state=False, reverse=False, cu_seqlens=None, state_v_first=False):
    """Run built-in ``variant``; ``state_v_first`` states are [N, HV, V, K] on the way in and out."""
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    o, final_state = get_op(variant)(
        q, k, v, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, reverse=reverse, **inputs,
    )
    if state_v_first and final_state is not None:
        final_state = final_state.transpose(-1, -2).contiguous()
    return o, final_state


def chunk(variant: str, q, k, v, inputs: dict, scale=None, initial_state=None, output_final_state=False,
          cu_seqlens=None, state_v_first=False, chunk_size=None):
    """Run built-in ``variant`` through its chunked kernels (training and prefill)."""
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    o, final_state = get_op(variant).chunk(
        q, k, v, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        cu_seqlens=cu_seqlens, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, **inputs,
    )
    if state_v_first and final_state is not None:
        final_state = final_state.transpose(-1, -2).contiguous()
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
