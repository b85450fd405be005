"""RWKV-6 models: FLA 0.6.0's ``RWKV6Config``, ``RWKV6Model`` and ``RWKV6ForCausalLM`` on the shared
stack (fla.models.modeling) with RWKV's block: LayerNorms (a pre-norm on layer 0), time mixing
(``RWKV6Attention``) and channel mixing (``RWKV6FeedForward``, with its own token shift)."""

from __future__ import annotations

import torch.nn as nn

from fla.layers import RWKV6Attention
from fla.layers.rwkv6 import LerpLinear
from fla.layers.utils import layer_state, store_state
from fla.models.configuration import FLAConfig
from fla.models.modeling import hybrid_attention, model_classes
from fla.modules import LayerNorm
from fla.modules.activations import ACT2FN
from fla.modules.token_shift import token_shift


class RWKV6Config(FLAConfig):
    model_type = "rwkv6"
    defaults = dict(attn_mode="chunk", expand_k=0.5, expand_v=1.0, hidden_ratio=3.5, norm_first=True, num_heads=4,
                    proj_low_rank_dim=32, gate_low_rank_dim=64, hidden_act="sqrelu", norm_bias=True, norm_eps=1e-5)


def rwkv_norm(config):
    return (LayerNorm(config.hidden_size, bias=config.norm_bias, eps=config.norm_eps) if config.fuse_norm else
            nn.LayerNorm(config.hidden_size, bias=config.norm_bias, eps=config.norm_eps))


class RWKV6FeedForward(nn.Module):
    """RWKV's channel mixing: sigmoid(receptance(x, shift)) * value(act(key(x, shift))), the token
    shift continuing from the cache's ``ffn_state`` (the previous call's last input [N, D])."""

    def __init__(self, hidden_size: int, hidden_ratio: float | None = None, intermediate_size: int | None = None,
                 hidden_act: str = "sqrelu", layer_idx: int = None):
        super().__init__()
        hidden_ratio = 3.5 if hidden_ratio is None else hidden_ratio
        if intermediate_size is None:
            intermediate_size = -(-int(hidden_size * hidden_ratio) // 32) * 32
        self.hidden_size, self.hidden_ratio, self.intermediate_size = hidden_size, hidden_ratio, intermediate_size
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))  # (FLA's submodule; token_shift does the work)
        self.key = LerpLinear(hidden_size, intermediate_size)
        self.value = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.receptance = LerpLinear(hidden_size, hidden_size)
        self.act_fn, self.layer_idx = ACT2FN[hidden_act], layer_idx

    def forward(self, x, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        if attention_mask is not None:  # padding enters as zeros: the token shift of a sequence's first token
            x = x * attention_mask[:, -x.shape[1]:, None].to(x.dtype)
        state = layer_state(self, past_key_values)
        cache = state["ffn_state"] if state is not None else None
        delta = token_shift(x, None, cache)
        out = self.receptance(x, delta).sigmoid() * self.value(self.act_fn(self.key(x, delta)))
        if use_cache:
            store_state(self, past_key_values, ffn_state=x[:, -1], offset=0)
        return out


class RWKVBlock(nn.Module):
    """RWKV's block: (a pre-norm on layer 0,) attn_norm -> time mixing -> ffn_norm -> channel
    mixing, residuals around both; a family gives ``time_mixer`` and ``channel_mixer``. Returns
    v_first as the fourth element (RWKV-7's, from layer 0; passed through otherwise)."""

    @staticmethod
    def time_mixer(config, layer_idx):
        raise NotImplementedError

    @staticmethod
    def channel_mixer(config, layer_idx):
        raise NotImplementedError

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        if config.norm_first and layer_idx == 0:
            self.pre_norm = rwkv_norm(config)
        self.attn_norm = rwkv_norm(config)
        self.attn = hybrid_attention(config, layer_idx) or self.time_mixer(config, layer_idx)
        self.ffn_norm = rwkv_norm(config)
        self.ffn = self.channel_mixer(config, layer_idx)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, v_first=None, **kwargs):
        residual = self.pre_norm(hidden_states) if hasattr(self, "pre_norm") else hidden_states
        out = self.attn(self.attn_norm(residual), attention_mask=attention_mask, past_key_values=past_key_values,
                        use_cache=use_cache, v_first=v_first, **kwargs)
        hidden_states = residual + out[0]
        hidden_states = hidden_states + self.ffn(self.ffn_norm(hidden_states), attention_mask, past_key_values,
                                                 use_cache)
        return (hidden_states, None, past_key_values, out[3] if len(out) > 3 else v_first)


class RWKV6Block(RWKVBlock):
    @staticmethod
    def time_mixer(c, i):
        return RWKV6Attention(mode=c.attn_mode, hidden_size=c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v,
                              num_heads=c.num_heads, proj_low_rank_dim=c.proj_low_rank_dim,
                              gate_low_rank_dim=c.gate_low_rank_dim, norm_eps=c.norm_eps, fuse_norm=c.fuse_norm,
                              layer_idx=i)

    @staticmethod
    def channel_mixer(c, i):
        return RWKV6FeedForward(c.hidden_size, c.hidden_ratio, c.intermediate_size, c.hidden_act, i)


RWKV6Model, RWKV6ForCausalLM = model_classes("RWKV6", RWKV6Config, RWKV6Block, __name__,
                                             model_make_final_norm=staticmethod(rwkv_norm))
