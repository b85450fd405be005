"""Gated Linear Attention models: FLA 0.6.0's ``GLAConfig``, ``GLAModel`` and ``GLAForCausalLM`` on the
shared stack (fla.models.modeling) with ``GatedLinearAttention`` blocks."""

from __future__ import annotations

from fla.layers import GatedLinearAttention
from fla.models.modeling import family

DEFAULTS = dict(hidden_size=2048, expand_k=0.5, expand_v=1.0, hidden_ratio=4, num_heads=4, num_kv_heads=None, feature_map=None,
    attn_mode="chunk", use_short_conv=False, conv_size=4, use_output_gate=True, clamp_min=None,
    elementwise_affine=True, use_gk=True, use_gv=False)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return GatedLinearAttention(
        mode=c.attn_mode, hidden_size=c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, use_short_conv=c.use_short_conv, conv_size=c.conv_size,
        use_output_gate=c.use_output_gate, gate_fn=c.hidden_act, elementwise_affine=c.elementwise_affine,
        norm_eps=c.norm_eps, clamp_min=c.clamp_min, fuse_norm=c.fuse_norm, layer_idx=i)


GLAConfig, GLABlock, GLAModel, GLAForCausalLM = family("GLA", "gla", DEFAULTS, _mixer, __name__)
