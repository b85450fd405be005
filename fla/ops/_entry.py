"""What every `fused_recurrent_*` and `chunk_*` entry point shares: FLA's argument conventions
mapped onto a generated op (state layout, optional inputs, variable-length checks), and the
checks of arguments the entry points read before the op's own checks (``RecurrentOp._check``).

The entry points have explicit signatures (no ``**kwargs``): an unknown keyword is Python's
``TypeError`` naming it. FLA 0.6.0's parameters that the op machinery cannot honour raise
``NotImplementedError`` when given a non-default value (``refuse``).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import torch

from flagen.runtime import compiled
from flagen.runtime.op import get_op


# --- argument checks ------------------------------------------------------------------------

def refuse(name: str, value, why: str):
    """FLA's parameter ``name`` is not supported: NotImplementedError unless it has its default
    (None or False)."""
    if value is not None and value is not False:
        raise NotImplementedError(f"`{name}` is not supported: {why}")


def no_head_first(head_first):
    """``head_first=False`` is FLA's layout and ours; True is refused (FLA 0.6.0 removed it too)."""
    if head_first:
        raise NotImplementedError("`head_first=True` is not supported: inputs are [B, T, H, ...] "
                                  "(head_first was removed in FLA too)")


def state_v_first_option(state_v_first, transpose_state_layout=None) -> bool:
    """``state_v_first``, or FLA's deprecated name for it ``transpose_state_layout``."""
    if transpose_state_layout is not None:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.",
                      DeprecationWarning, stacklevel=3)
        state_v_first = transpose_state_layout
    return bool(state_v_first)


def check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens):
    """``cu_seqlens_cpu`` (FLA's host copy of cu_seqlens) is not needed here; it must still fit."""
    if cu_seqlens_cpu is None:
        return
    if cu_seqlens is None:
        raise ValueError("`cu_seqlens_cpu` is given without `cu_seqlens`")
    if not isinstance(cu_seqlens_cpu, torch.Tensor) or tuple(cu_seqlens_cpu.shape) != tuple(cu_seqlens.shape):
        raise ValueError(f"`cu_seqlens_cpu` must be a tensor shaped like `cu_seqlens` {tuple(cu_seqlens.shape)}, "
                         f"got {_shape_of(cu_seqlens_cpu)}")


def _shape_of(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def tensor(name: str, x, ndim: int | None = None, what: str = ""):
    """``x`` is a tensor (of ``ndim`` dims, shaped ``what``), else TypeError / ValueError naming it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor{' ' + what if what else ''}, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"`{name}` must have shape {what or f'of {ndim} dims'}, got {tuple(x.shape)}")
    return x


def expect_shape(name: str, x, shape: tuple, what: str):
    """``x`` is a tensor of exactly ``shape`` (described as ``what``, e.g. "[HV] = [4]")."""
    tensor(name, x, what=what)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {what}, got {tuple(x.shape)}")
    return x


def negative_float(name: str, x) -> float:
    """A finite negative Python number (e.g. KDA's ``lower_bound``)."""
    if isinstance(x, (bool, torch.Tensor)) or not isinstance(x, numbers.Real):
        raise TypeError(f"`{name}` must be a negative float, got {type(x).__name__}")
    x = float(x)
    if not (x < 0 and math.isfinite(x)):
        raise ValueError(f"`{name}` must be a negative finite float (a log-space lower bound), got {x}")
    return x


# --- running a variant ----------------------------------------------------------------------

def _transposed_state(initial_state):
    """A [N, HV, V, K] state (or an (S, z) pair with such an S) as [N, HV, K, V]."""
    what = "[N, HV, V, K] (state_v_first=True)"
    if isinstance(initial_state, tuple):
        if len(initial_state) != 2:
            raise ValueError(f"`initial_state` must be a tensor or an (S, z) pair, got a tuple of {len(initial_state)}")
        return (tensor("initial_state[0]", initial_state[0], 4, what).transpose(-1, -2), initial_state[1])
    return tensor("initial_state", initial_state, 4, what).transpose(-1, -2)


def _check_v_first_shape(initial_state, q, v, cu_seqlens):
    """A [N, HV, V, K] state's shape, in the layout the caller gives (the op checks the
    transposed one and would name the K-first shape)."""
    s = initial_state[0] if isinstance(initial_state, tuple) else initial_state
    if not all(isinstance(x, torch.Tensor) and x.dim() == 4 for x in (s, q, v)):
        return  # the op's own checks name the culprit
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1:
        n = cu_seqlens.numel() - 1
    elif cu_seqlens is None:
        n = q.shape[0]
    else:
        return
    expected = (n, v.shape[2], v.shape[3], q.shape[3])
    if tuple(s.shape) != expected:
        name = "initial_state[0]" if isinstance(initial_state, tuple) else "initial_state"
        raise ValueError(f"`{name}` must have shape [N, HV, V, K] = {expected} (state_v_first=True), "
                         f"got {tuple(s.shape)}")


def _run(call, q, k, v, inputs: dict, initial_state, state_v_first: bool, **options):
    """``call(q, k, v, initial_state=..., **inputs, **options)`` with ``state_v_first`` states
    [N, HV, V, K] on the way in and out (for (S, z) pairs: S)."""
    if state_v_first and initial_state is not None:
        transposed = _transposed_state(initial_state)  # checks it is a 4-dim tensor (or such a pair)
        _check_v_first_shape(initial_state, q, v, options.get("cu_seqlens"))
        initial_state = transposed
    o, final_state = call(q, k, v, initial_state=initial_state, **inputs, **options)
    if state_v_first and final_state is not None:
        if isinstance(final_state, tuple):
            final_state = (final_state[0].transpose(-1, -2).contiguous(), *final_state[1:])
        else:
            final_state = final_state.transpose(-1, -2).contiguous()
    return o, final_state


def _entry(mode: str, variant: str):
    """The op's call for ``mode``: direct when eager, a custom op while torch.compile traces
    (flagen.runtime.compiled: a leaf of the graph)."""
    if torch.compiler.is_compiling():
        return functools.partial(compiled.call, mode, variant)
    op = get_op(variant)
    return op.chunk if mode == "chunk" else op


def fused_recurrent(variant: str, q, k, v, inputs: dict, *, scale=None, initial_state=None,
                    output_final_state=False, reverse=False, cu_seqlens=None, state_v_first=False):
    """Run built-in ``variant`` token by token."""
    return _run(_entry("recurrent", variant), q, k, v, inputs, initial_state, state_v_first, scale=scale,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=bool(reverse))


def chunk(variant: str, q, k, v, inputs: dict, *, scale=None, initial_state=None, output_final_state=False,
          reverse=False, cu_seqlens=None, state_v_first=False, chunk_size=None):
    """Run built-in ``variant`` through its chunked kernels (training and prefill)."""
    return _run(_entry("chunk", variant), q, k, v, inputs, initial_state, state_v_first, scale=scale,
                output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=bool(reverse),
                chunk_size=chunk_size)


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


def linear_attn(entry, normalize: bool, q, k, v, initial_state, **options):
    """Linear attention through ``entry`` (fused_recurrent or chunk). With ``normalize`` the
    states are FLA's pairs (S [N, HV, K, V], z [N, 1, HV, K]); the op's z is [N, HV, K]."""
    if normalize and isinstance(initial_state, tuple):
        if len(initial_state) != 2:
            raise ValueError("`initial_state` must be an (S, z) pair with `normalize=True`, "
                             f"got a tuple of {len(initial_state)}")
        s0, z0 = initial_state
        z0 = tensor("initial_state[1]", z0, what="(z) [N, 1, HV, K]")
        if z0.dim() == 4:
            if z0.shape[1] != 1:
                raise ValueError(f"`initial_state[1]` (z) must have shape [N, 1, HV, K], got {tuple(z0.shape)}")
            z0 = z0.squeeze(1)
        initial_state = (s0, z0)
    o, final_state = entry("linear_attn_normalized" if normalize else "linear_attn", q, k, v, {},
                           initial_state=initial_state, **options)
    if normalize and final_state is not None:
        final_state = (final_state[0], final_state[1].unsqueeze(1))
    return o, final_state


def ones_like_heads(v, dtype=None) -> torch.Tensor:
    """A per-token, per-state-head tensor of ones [B, T, HV] (beta when none is given)."""
    tensor("v", v, 4, "[B, T, HV, V]")
    return v.new_ones(v.shape[:3], dtype=dtype or v.dtype)


def beta_option(use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool) -> str | None:
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`")
    if not use_beta_sigmoid_in_kernel:
        return None
    return "2sigmoid" if allow_neg_eigval else "sigmoid"


def variant_name(base: str, qk_l2norm: bool = False, gate: str = "", beta: str | None = None) -> str:
    """The built-in variant's name (flagen.ir.library's naming): base[_l2norm][_gate...][_beta_...]."""
    return base + ("_l2norm" if qk_l2norm else "") + gate + (f"_beta_{beta}" if beta else "")
