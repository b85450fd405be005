"""Kimi Delta Attention (KDA) models: FLA 0.6.0's ``KDAConfig``, ``KDAModel`` and ``KDAForCausalLM`` on the
shared stack (fla.models.modeling) with ``KimiDeltaAttention`` blocks."""

from __future__ import annotations

from fla.layers import KimiDeltaAttention
from fla.models.modeling import family

DEFAULTS = dict(attn_mode="chunk", expand_v=1.0, use_short_conv=True, conv_size=4, head_dim=128, num_heads=16,
    num_v_heads=None, allow_neg_eigval=False, safe_gate=False, lower_bound=None)  # FLA 0.6.0's fields of this family (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return KimiDeltaAttention(
        mode=c.attn_mode, hidden_size=c.hidden_size, expand_v=c.expand_v, head_dim=c.head_dim, num_heads=c.num_heads,
        num_v_heads=c.num_v_heads, use_short_conv=c.use_short_conv, allow_neg_eigval=c.allow_neg_eigval,
        safe_gate=c.safe_gate, lower_bound=c.lower_bound, conv_size=c.conv_size, norm_eps=c.norm_eps, layer_idx=i)


KDAConfig, KDABlock, KDAModel, KDAForCausalLM = family("KDA", "kda", DEFAULTS, _mixer, __name__)
