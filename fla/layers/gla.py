"""Gated Linear Attention (Yang et al., 2023): a per-key decay from a low-rank projection,
``log g = logsigmoid(gk_proj(x)) / gate_logit_normalizer``. FLA 0.6.0's ``GatedLinearAttention``."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from fla.layers.base import QKVLayer
from fla.modules.activations import ACT2FN
from fla.ops.gla import chunk_gla, fused_recurrent_gla

MODES = ("chunk", "fused_recurrent", "fused_chunk")


class GatedLinearAttention(QKVLayer):
    """GLA with FLA's arguments and parameter names. ``mode``: 'chunk' (and 'fused_chunk', the
    same chunked kernels here) for training and prefill; inputs of at most 64 tokens take
    'fused_recurrent'. States [N, H, dv, dk] (V first, as FLA's layer keeps them)."""

    def __init__(self, mode: str = "chunk", hidden_size: int = 1024, expand_k: float = 0.5, expand_v: float = 1.0,
                 num_heads: int = 4, num_kv_heads: int | None = None, feature_map: str | None = None,
                 use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
                 use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool | None = True,
                 norm_eps: float = 1e-5, gate_logit_normalizer: int = 16, gate_low_rank_dim: int = 16,
                 clamp_min: float | None = None, fuse_norm: bool = True, layer_idx: int = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        self.mode, self.layer_idx, self.clamp_min = mode, layer_idx, clamp_min
        self.feature_map_fn = ACT2FN[feature_map] if feature_map is not None else None
        self._init_dims(hidden_size, expand_k, expand_v, num_heads, num_kv_heads)
        self._init_qkv(use_short_conv, conv_size, conv_bias)
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, self.key_dim_per_group, bias=True))
        self._init_readout(use_output_gate, gate_fn, fuse_norm, elementwise_affine, norm_eps, ACT2FN)
        self.gate_logit_normalizer = gate_logit_normalizer

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v, gk = self._heads(q, k, v, self.gk_proj(x))
        gk = F.logsigmoid(gk.float()) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)
        if self.feature_map_fn is not None:
            q, k = self.feature_map_fn(q), self.feature_map_fn(k)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(initial_state=h0, output_final_state=use_cache, state_v_first=True, cu_seqlens=cu_seqlens)
        if context["seq_len"] <= 64 or self.mode == "fused_recurrent":
            return fused_recurrent_gla(q, k, v, gk=gk, **common)
        return chunk_gla(q, k, v, g=gk, **common)
