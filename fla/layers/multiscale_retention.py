"""Multi-scale retention (RetNet, Sun et al., 2023): a fixed decay per head, 1 - 2^(-5 - h), with
rotary position embeddings on q and k. FLA 0.6.0's ``MultiScaleRetention``."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from fla.layers.base import QKVLayer
from fla.layers.utils import padding_offsets
from fla.modules.rotary import RotaryEmbedding
from fla.ops.retention import chunk_retention, fused_recurrent_retention

MODES = ("chunk", "fused_chunk", "parallel", "fused_recurrent")


class MultiScaleRetention(QKVLayer):
    """RetNet's retention with FLA's arguments and parameter names. With autograd on it runs
    chunked; without, inputs of at most 64 tokens run token by token and longer ones by
    ``mode`` ('fused_chunk' and 'parallel' are the chunked kernels here). Rotary positions
    continue from the cache, less each sequence's left padding. States [N, H, dk, dv]."""

    def __init__(self, mode: str = "chunk", hidden_size: int = 1024, expand_k: float = 1.0, expand_v: float = 2.0,
                 num_heads: int = 8, num_kv_heads: int | None = None, feature_map: str | None = None,
                 use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
                 use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool | None = True,
                 norm_eps: float = 1e-5, fuse_norm: bool = True, layer_idx: int = None, **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        self.mode, self.layer_idx = mode, layer_idx
        self.feature_map_fn = ACT2FN[feature_map] if feature_map is not None else None
        self._init_dims(hidden_size, expand_k, expand_v, num_heads, num_kv_heads)
        self._init_qkv(use_short_conv, conv_size, conv_bias)
        self._init_readout(use_output_gate, gate_fn, fuse_norm, elementwise_affine, norm_eps, ACT2FN)
        if self.head_k_dim > 256:
            raise ValueError(f"the key head dim ({self.head_k_dim}) must be at most 256")
        self.rotary = RotaryEmbedding(dim=self.head_k_dim)

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v = self._heads(q, k, v)
        if self.feature_map_fn is not None:
            q, k = self.feature_map_fn(q), self.feature_map_fn(k)
        position_ids = context["kwargs"].get("position_ids")
        if position_ids is not None and cu_seqlens is None:  # (as a CUDA graph's decoding step gives them)
            q, k = self.rotary.at_positions(q, k, position_ids)
        else:
            cache = context["past_key_values"]
            seen = cache.get_seq_length(self.layer_idx) if cache is not None else 0
            offset = padding_offsets(context["attention_mask"], seen, context["seq_len"])
            longest = q.shape[1] + (offset if isinstance(offset, int) else int(offset.max()))
            q, k = self.rotary(q, k, seqlen_offset=offset, max_seqlen=longest, cu_seqlens=cu_seqlens)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(initial_state=h0, output_final_state=use_cache, cu_seqlens=cu_seqlens)
        if not torch.is_grad_enabled() and (context["seq_len"] <= 64 or self.mode == "fused_recurrent"):
            return fused_recurrent_retention(q, k, v, **common)
        return chunk_retention(q, k, v, **common)
