"""the Transformer (softmax attention) models: FLA 0.6.0's ``TransformerConfig``, ``TransformerModel`` and ``TransformerForCausalLM`` on the
shared stack (fla.models.modeling) with ``Attention`` blocks."""

from __future__ import annotations

from fla.layers import Attention
from fla.models.modeling import family

DEFAULTS = dict(num_heads=32, num_kv_heads=None, qkv_bias=False, qk_norm=False, window_size=None, rope_theta=10000.0,
    elementwise_affine=True)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return Attention(
        hidden_size=c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, qkv_bias=c.qkv_bias,
        qk_norm=c.qk_norm, window_size=c.window_size, rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings, layer_idx=i)


TransformerConfig, TransformerBlock, TransformerModel, TransformerForCausalLM = family("Transformer", "transformer", DEFAULTS, _mixer, __name__)
