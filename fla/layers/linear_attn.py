"""Linear attention with a feature map of q and k (Katharopoulos et al., 2020, and the learned
maps after it: Hedgehog, T2R, DPFP, Hadamard). FLA 0.6.0's ``LinearAttention``."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from fla.layers.base import QKVLayer
from fla.modules import RMSNorm
from fla.modules.feature_map import DPFPFeatureMap, HadamardFeatureMap, HedgehogFeatureMap, T2RFeatureMap, elu_p1
from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn

MODES = ("chunk", "fused_chunk", "fused_recurrent")
LEARNED_MAPS = {"hedgehog": HedgehogFeatureMap, "t2r": T2RFeatureMap, "elementwise_product": HadamardFeatureMap}
FIXED_MAPS = {"dpfp": DPFPFeatureMap, "elu": lambda head_dim: elu_p1, "relu": lambda head_dim: nn.ReLU(),
              "identity": lambda head_dim: nn.Identity()}


class LinearAttention(QKVLayer):
    """Linear attention with FLA's arguments and parameter names: ``feature_map`` of q and k
    ('elementwise_product', 'hedgehog', 't2r', 'dpfp', 'elu', 'relu', 'identity'; the learned ones
    shared by q and k with ``tie_feature_map_qk``), optional sum-normalisation of the mapped q
    and k (``norm_q``, ``norm_k``), the normalised readout (``do_feature_map_norm``), a per-head
    ``output_norm`` ('rmsnorm' or 'identity'). With autograd on it runs chunked; without, inputs
    of at most 64 tokens run token by token and longer ones by ``mode``. States [N, H, dk', dv]."""

    def __init__(self, mode: str = "chunk", hidden_size: str = 1024, expand_k: float = 1.0, expand_v: float = 1.0,
                 num_heads: int = 8, num_kv_heads: int | None = None, feature_map: str = "elementwise_product",
                 tie_feature_map_qk: bool = False, output_norm: str = "rmsnorm", norm_q: bool = False,
                 norm_k: bool = False, do_feature_map_norm: bool = False, elementwise_affine: bool = True,
                 norm_eps: float = 1e-5, layer_idx: int | None = None, **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if output_norm not in ("rmsnorm", "identity"):
            raise ValueError(f"`output_norm` must be 'rmsnorm' or 'identity', got {output_norm!r}")
        self.mode, self.layer_idx, self.do_feature_map_norm = mode, layer_idx, do_feature_map_norm
        self.norm_q, self.norm_k = norm_q, norm_k
        self._init_dims(hidden_size, expand_k, expand_v, num_heads, num_kv_heads)
        if feature_map in LEARNED_MAPS:
            self.feature_map_q = LEARNED_MAPS[feature_map](self.head_k_dim)
            self.feature_map_k = self.feature_map_q if tie_feature_map_qk else LEARNED_MAPS[feature_map](self.head_k_dim)
        elif feature_map in FIXED_MAPS:
            self.feature_map_q = FIXED_MAPS[feature_map](self.head_k_dim)
            self.feature_map_k = FIXED_MAPS[feature_map](self.head_k_dim)
        else:
            raise ValueError(f"`feature_map` must be one of {sorted({**LEARNED_MAPS, **FIXED_MAPS})}, got "
                             f"{feature_map!r}")
        self._init_qkv(False, 4, False)
        self.norm = (RMSNorm(self.head_v_dim, elementwise_affine, eps=norm_eps, dtype=torch.float32)
                     if output_norm == "rmsnorm" else nn.Identity())
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v = self._heads(q, k, v)
        q, k = self.feature_map_q(q), self.feature_map_k(k)
        if self.norm_q:
            q = q / (q.sum(-1, keepdim=True) + 1e-4)
        if self.norm_k:
            k = k / (k.sum(-1, keepdim=True) + 1e-4)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(initial_state=h0, output_final_state=use_cache, normalize=self.do_feature_map_norm,
                      cu_seqlens=cu_seqlens)
        if not torch.is_grad_enabled() and (context["seq_len"] <= 64 or self.mode == "fused_recurrent"):
            return fused_recurrent_linear_attn(q, k, v, **common)
        return chunk_linear_attn(q, k, v, **common)

    def _readout(self, o, x):
        return self.o_proj(rearrange(self.norm(o), "... h d -> ... (h d)").to(x.dtype))
