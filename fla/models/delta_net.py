"""DeltaNet models: FLA 0.6.0's ``DeltaNetConfig``, ``DeltaNetModel`` and ``DeltaNetForCausalLM`` on the
shared stack (fla.models.modeling) with ``DeltaNet`` blocks."""

from __future__ import annotations

from fla.layers import DeltaNet
from fla.models.modeling import family

DEFAULTS = dict(attn_mode="chunk", expand_k=1.0, expand_v=1.0, use_gate=False, use_short_conv=True, conv_size=4, use_beta=True,
    use_output_norm=True, num_heads=16, qk_norm="l2", qk_activation="silu", allow_neg_eigval=False)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return DeltaNet(
        mode=c.attn_mode, hidden_size=c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
        use_gate=c.use_gate, use_beta=c.use_beta, use_short_conv=c.use_short_conv,
        allow_neg_eigval=c.allow_neg_eigval, conv_size=c.conv_size, qk_norm=c.qk_norm,
        qk_activation=c.qk_activation, norm_eps=c.norm_eps, layer_idx=i)


DeltaNetConfig, DeltaNetBlock, DeltaNetModel, DeltaNetForCausalLM = family("DeltaNet", "delta_net", DEFAULTS, _mixer, __name__)
