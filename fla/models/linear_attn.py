"""linear attention models: FLA 0.6.0's ``LinearAttentionConfig``, ``LinearAttentionModel`` and ``LinearAttentionForCausalLM`` on the
shared stack (fla.models.modeling) with ``LinearAttention`` blocks."""

from __future__ import annotations

from fla.layers import LinearAttention
from fla.models.modeling import family

DEFAULTS = dict(attn_mode="fused_chunk", expand_k=1.0, expand_v=1.0, num_heads=4, num_kv_heads=None,
    feature_map="elementwise_product", tie_feature_map_qk=False, norm_q=False, norm_k=False,
    norm_feature_map=False, elementwise_affine=True)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return LinearAttention(
        mode=c.attn_mode, hidden_size=c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, tie_feature_map_qk=c.tie_feature_map_qk,
        norm_q=c.norm_q, norm_k=c.norm_k, do_feature_map_norm=c.norm_feature_map,
        elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps, layer_idx=i)


LinearAttentionConfig, LinearAttentionBlock, LinearAttentionModel, LinearAttentionForCausalLM = family("LinearAttention", "linear_attn", DEFAULTS, _mixer, __name__)
