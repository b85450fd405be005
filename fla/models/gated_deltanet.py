"""Gated DeltaNet models: FLA 0.6.0's ``GatedDeltaNetConfig``, ``GatedDeltaNetModel`` and ``GatedDeltaNetForCausalLM`` on the
shared stack (fla.models.modeling) with ``GatedDeltaNet`` blocks."""

from __future__ import annotations

from fla.layers import GatedDeltaNet
from fla.models.modeling import family

DEFAULTS = dict(attn_mode="chunk", expand_v=2.0, use_gate=True, output_gate_activation="swish", use_short_conv=True,
    conv_size=4, head_dim=256, num_heads=6, num_v_heads=None, num_hidden_layers=21, allow_neg_eigval=False)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return GatedDeltaNet(
        hidden_size=c.hidden_size, expand_v=c.expand_v, head_dim=c.head_dim, num_heads=c.num_heads,
        num_v_heads=c.num_v_heads, mode=c.attn_mode, use_gate=c.use_gate, use_short_conv=c.use_short_conv,
        allow_neg_eigval=c.allow_neg_eigval, conv_size=c.conv_size, layer_idx=i, norm_eps=c.norm_eps,
        output_gate_activation=c.output_gate_activation)


GatedDeltaNetConfig, GatedDeltaNetBlock, GatedDeltaNetModel, GatedDeltaNetForCausalLM = family("GatedDeltaNet", "gated_deltanet", DEFAULTS, _mixer, __name__)
