"""RetNet models: FLA 0.6.0's ``RetNetConfig``, ``RetNetModel`` and ``RetNetForCausalLM`` on the
shared stack (fla.models.modeling) with ``MultiScaleRetention`` blocks."""

from __future__ import annotations

from fla.layers import MultiScaleRetention
from fla.models.modeling import family

DEFAULTS = dict(attn_mode="chunk", expand_k=1.0, expand_v=2.0, hidden_ratio=2, num_heads=8, num_kv_heads=None, feature_map=None,
    use_short_conv=False, conv_size=4, use_output_gate=True, elementwise_affine=True)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return MultiScaleRetention(
        mode=c.attn_mode, hidden_size=c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads, feature_map=c.feature_map, use_output_gate=c.use_output_gate,
        gate_fn=c.hidden_act, elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps, fuse_norm=c.fuse_norm,
        layer_idx=i)


RetNetConfig, RetNetBlock, RetNetModel, RetNetForCausalLM = family("RetNet", "retnet", DEFAULTS, _mixer, __name__)
