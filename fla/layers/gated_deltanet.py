"""Gated DeltaNet (Yang et al., 2024): the delta rule after a per-head decay
g = -exp(A_log) softplus(a_proj(x) + dt_bias), beta = sigmoid(b_proj(x)) (x 2 with
``allow_neg_eigval``), L2-normalised q and k. FLA 0.6.0's ``GatedDeltaNet``."""

from __future__ import annotations

import torch
import torch.nn as nn

import fla.ops.gated_delta_rule as gdr
from fla.layers.base import QKVLayer, dt_bias_init

MODES = ("chunk", "fused_recurrent")


class GatedDeltaNet(QKVLayer):
    """Gated DeltaNet with FLA's arguments and parameter names: ``num_heads`` q/k heads of
    ``head_dim``, ``num_v_heads`` value (state) heads of head_dim * ``expand_v`` (a multiple of
    num_heads: grouped value heads), short convolutions, an output gate (``use_gate``,
    ``output_gate_activation``) on the per-head norm. With autograd on it runs chunked; without,
    inputs of at most 64 tokens run token by token (outside training) and longer ones by
    ``mode``. The gate and beta are computed in the kernels. States [N, HV, dv, dk]."""

    silu_without_conv = True  # (as FLA: silu on the projections when no conv applies it)

    def __init__(self, hidden_size: int = 2048, expand_v: float = 2, head_dim: int = 256, num_heads: int = 6,
                 num_v_heads: int = None, mode: str = "chunk", use_gate: bool = True, use_short_conv: bool = True,
                 allow_neg_eigval: bool = False, conv_size: int = 4, conv_bias: bool = False, layer_idx: int = None,
                 norm_eps: float = 1e-5, output_gate_activation: str = "swish", **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        self.mode, self.allow_neg_eigval, self.layer_idx = mode, allow_neg_eigval, layer_idx
        self._init_head_dims(hidden_size, head_dim, num_heads, num_v_heads, expand_v)
        self._init_projections(dict(q=self.key_dim, k=self.key_dim, v=self.value_dim), use_short_conv, conv_size,
                               conv_bias)
        self.a_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        # A uniform in (0, 16]; dt in [1e-3, 0.1] log-uniformly, dt_bias its softplus inverse (Mamba2's init)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads).uniform_(0, 16).clamp_min(1e-4).log())
        self.dt_bias = nn.Parameter(dt_bias_init(self.num_v_heads))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        self._init_o_norm_readout(use_gate, norm_eps, output_gate_activation)

    _readout = QKVLayer._o_norm_readout

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v = self._split_heads(q, k, v)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(g=self.a_proj(x).float(), beta=self.b_proj(x).float(), initial_state=h0,
                      output_final_state=use_cache, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True,
                      A_log=self.A_log, dt_bias=self.dt_bias, use_beta_sigmoid_in_kernel=True,
                      allow_neg_eigval=self.allow_neg_eigval, state_v_first=True, cu_seqlens=cu_seqlens)
        recurrent = not torch.is_grad_enabled() and (
            (context["seq_len"] <= 64 and not self.training) or self.mode == "fused_recurrent")
        if recurrent:
            return gdr.fused_recurrent_gated_delta_rule(q, k, v, **common)
        return gdr.chunk_gated_delta_rule(q, k, v, **common)
