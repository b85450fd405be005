"""Kimi Delta Attention (KDA, Kimi Linear): the delta rule after a per-key decay
g = -exp(A_log) softplus(f_proj(x) + dt_bias) (or lower_bound sigmoid(exp(A_log)(f + dt_bias))),
beta = sigmoid(b_proj(x)), L2-normalised q and k, a sigmoid output gate. FLA 0.6.0's
``KimiDeltaAttention``."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

import fla.ops.kda as kda
from fla.layers.base import QKVLayer, dt_bias_init
from fla.modules import FusedRMSNormGated

MODES = ("chunk", "fused_recurrent")


class KimiDeltaAttention(QKVLayer):
    """KDA with FLA's arguments and parameter names: ``num_heads`` q/k heads of ``head_dim``,
    ``num_v_heads`` value (state) heads of head_dim * ``expand_v``, the decay's low-rank
    projection f_proj to head_dim per value head and per key, A_log [HV] and dt_bias
    [HV * head_dim], an output gate g_proj (low rank) through sigmoid on the per-head norm.
    ``safe_gate`` is FLA's hint that the gates are bounded (it needs ``lower_bound``); these
    kernels are exact either way. States [N, HV, dv, dk]."""

    silu_without_conv = True  # (as FLA: silu on the projections when no conv applies it)

    def __init__(self, hidden_size: int = 2048, expand_v: float = 1, head_dim: int = 128, num_heads: int = 16,
                 num_v_heads: int = None, mode: str = "chunk", use_short_conv: bool = True,
                 allow_neg_eigval: bool = False, safe_gate: bool = False, lower_bound: float | None = None,
                 conv_size: int = 4, conv_bias: bool = False, layer_idx: int = None, norm_eps: float = 1e-5,
                 **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if safe_gate and lower_bound is None:
            raise ValueError("`safe_gate=True` needs `lower_bound` (the gates' floor, in log space)")
        if lower_bound is not None and not lower_bound < 0:
            raise ValueError(f"`lower_bound` must be negative, got {lower_bound}")
        self.mode, self.allow_neg_eigval, self.safe_gate, self.lower_bound = mode, allow_neg_eigval, safe_gate, \
            lower_bound
        self._init_head_dims(hidden_size, head_dim, num_heads, num_v_heads, expand_v)
        self.layer_idx = layer_idx
        self._init_projections(dict(q=self.key_dim, k=self.key_dim, v=self.value_dim), use_short_conv, conv_size,
                               conv_bias)
        self.gate_dim = self.num_v_heads * head_dim
        self.f_proj = nn.Sequential(nn.Linear(hidden_size, self.head_v_dim, bias=False),
                                    nn.Linear(self.head_v_dim, self.gate_dim, bias=False))
        self.b_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        A = torch.zeros(self.num_v_heads) if safe_gate else torch.empty(self.num_v_heads).uniform_(1, 16).log()
        self.A_log = nn.Parameter(A)
        self.dt_bias = nn.Parameter(dt_bias_init(self.gate_dim))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        self.g_proj = nn.Sequential(nn.Linear(hidden_size, self.head_v_dim, bias=False),
                                    nn.Linear(self.head_v_dim, self.value_dim, bias=True))
        self.o_norm = FusedRMSNormGated(self.head_v_dim, activation="sigmoid", eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v = self._split_heads(q, k, v)
        g = rearrange(self.f_proj(x).float(), "... (h d) -> ... h d", d=self.head_k_dim)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(A_log=self.A_log, dt_bias=self.dt_bias, initial_state=h0, output_final_state=use_cache,
                      use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                      allow_neg_eigval=self.allow_neg_eigval, lower_bound=self.lower_bound, state_v_first=True,
                      cu_seqlens=cu_seqlens)
        recurrent = not torch.is_grad_enabled() and (
            (context["seq_len"] <= 64 and not self.training) or self.mode == "fused_recurrent")
        if recurrent:
            return kda.fused_recurrent_kda(q, k, v, g, self.b_proj(x).float(), **common)
        return kda.chunk_kda(q, k, v, g, self.b_proj(x).float(), **common)

    def _readout(self, o, x):
        o = self.o_norm(o, rearrange(self.g_proj(x), "... (h d) -> ... h d", d=self.head_v_dim))
        return self.o_proj(rearrange(o, "... h d -> ... (h d)").to(x.dtype))
