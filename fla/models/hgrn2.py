"""HGRN2 models: FLA 0.6.0's ``HGRN2Config``, ``HGRN2Model`` and ``HGRN2ForCausalLM`` on the shared
stack (fla.models.modeling) with ``HGRN2Attention`` blocks and the learned per-layer floors of
the forget gate (``lower_bounds``, with ``use_lower_bound``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers import HGRN2Attention
from fla.models.modeling import FLAModel, family

DEFAULTS = dict(attn_mode="chunk", num_heads=16, expand_ratio=128, use_short_conv=False, conv_size=4,
                use_lower_bound=True, elementwise_affine=True)  # (fla.models.configuration.COMMON: the rest)


def _mixer(c, i):
    return HGRN2Attention(mode=c.attn_mode, hidden_size=c.hidden_size, num_heads=c.num_heads,
                          expand_ratio=c.expand_ratio, use_short_conv=c.use_short_conv, conv_size=c.conv_size,
                          elementwise_affine=c.elementwise_affine, norm_eps=c.norm_eps, layer_idx=i)


class _HGRN2Base(FLAModel):
    """FLAModel with ``lower_bounds`` [layers, hidden_size]: layer i's floor is the cumulative
    softmax over layers up to i (0 for the first layer)."""

    def __init__(self, config):
        super().__init__(config)
        if config.use_lower_bound:
            self.lower_bounds = nn.Parameter(torch.zeros(config.num_hidden_layers, config.hidden_size))

    def layer_kwargs(self, layer_idx):
        if not self.config.use_lower_bound:
            return {}
        bounds = self.lower_bounds.softmax(0, dtype=torch.float)
        return dict(lower_bound=(bounds.cumsum(0) - bounds[0])[layer_idx])


HGRN2Config, HGRN2Block, HGRN2Model, HGRN2ForCausalLM = family("HGRN2", "hgrn2", DEFAULTS, _mixer, __name__,
                                                               model_base=_HGRN2Base)
