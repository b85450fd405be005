"""RWKV-7 models: FLA 0.6.0's ``RWKV7Config``, ``RWKV7Model`` and ``RWKV7ForCausalLM`` on the shared
stack (fla.models.modeling) with RWKV's block (fla.models.rwkv6's norms), time mixing
(``RWKV7Attention``, layer 0's values handed to the later layers as v_first) and channel mixing
(``RWKV7FeedForward``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers import RWKV7Attention
from fla.layers.utils import layer_state, store_state
from fla.models.configuration import FLAConfig
from fla.models.modeling import model_classes
from fla.models.rwkv6 import RWKVBlock, rwkv_norm
from fla.modules.activations import ACT2FN
from fla.modules.token_shift import token_shift


class RWKV7Config(FLAConfig):
    model_type = "rwkv7"
    defaults = dict(attn_mode="chunk", hidden_ratio=4, norm_first=True, head_dim=64, num_heads=None, value_dim=None,
                    decay_low_rank_dim=64, gate_low_rank_dim=128, a_low_rank_dim=64, v_low_rank_dim=16,
                    hidden_act="sqrelu", norm_bias=True, norm_eps=1e-5, use_l2warp=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.head_dim is None and self.num_heads is not None:
            self.head_dim = self.hidden_size // self.num_heads
        elif self.num_heads is None:
            self.num_heads = self.hidden_size // self.head_dim
        if self.value_dim is None or isinstance(self.value_dim, int):  # one value dim per layer
            self.value_dim = [self.value_dim or self.hidden_size] * self.num_hidden_layers
        if len(self.value_dim) != self.num_hidden_layers:
            raise ValueError(f"`value_dim` must give one value dim per layer ({self.num_hidden_layers})")


class RWKV7FeedForward(nn.Module):
    """RWKV-7's channel mixing: value(act(key(x + shift * x_k))), the token shift continuing from
    the cache's ``ffn_state``."""

    def __init__(self, hidden_size: int, hidden_ratio: int | None = None, intermediate_size: int | None = None,
                 hidden_act: str = "sqrelu", layer_idx: int = None, num_hidden_layers: int = None):
        super().__init__()
        hidden_ratio = 4 if hidden_ratio is None else hidden_ratio
        if intermediate_size is None:
            intermediate_size = -(-int(hidden_size * hidden_ratio) // 32) * 32
        self.hidden_size, self.hidden_ratio, self.intermediate_size = hidden_size, hidden_ratio, intermediate_size
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.x_k = nn.Parameter(torch.zeros(hidden_size))
        self.key = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn, self.layer_idx, self.num_hidden_layers = ACT2FN[hidden_act], layer_idx, num_hidden_layers
        if layer_idx is not None and num_hidden_layers:  # RWKV-7's init
            with torch.no_grad():
                to_zero = 1.0 - layer_idx / num_hidden_layers
                self.x_k.copy_(1.0 - (torch.arange(hidden_size) / hidden_size) ** (to_zero ** 4))
                nn.init.orthogonal_(self.key.weight)
                self.value.weight.zero_()

    def forward(self, x, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        if attention_mask is not None:
            x = x * attention_mask[:, -x.shape[1]:, None].to(x.dtype)
        state = layer_state(self, past_key_values)
        delta = token_shift(x, None, state["ffn_state"] if state is not None else None)
        if use_cache:
            store_state(self, past_key_values, ffn_state=x[:, -1], offset=0)
        return self.value(self.act_fn(self.key(x + delta * self.x_k)))


class RWKV7Block(RWKVBlock):
    @staticmethod
    def time_mixer(c, i):
        return RWKV7Attention(mode=c.attn_mode, hidden_size=c.hidden_size, head_dim=c.head_dim, num_heads=c.num_heads,
                              decay_low_rank_dim=c.decay_low_rank_dim, gate_low_rank_dim=c.gate_low_rank_dim,
                              a_low_rank_dim=c.a_low_rank_dim, v_low_rank_dim=c.v_low_rank_dim, norm_eps=c.norm_eps,
                              fuse_norm=c.fuse_norm, layer_idx=i, value_dim=c.value_dim[i],
                              num_hidden_layers=c.num_hidden_layers)

    @staticmethod
    def channel_mixer(c, i):
        return RWKV7FeedForward(c.hidden_size, c.hidden_ratio, c.intermediate_size, c.hidden_act, i,
                                c.num_hidden_layers)


RWKV7Model, RWKV7ForCausalLM = model_classes("RWKV7", RWKV7Config, RWKV7Block, __name__,
                                             model_make_final_norm=staticmethod(rwkv_norm))
