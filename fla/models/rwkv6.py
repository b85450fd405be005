"""RWKV-6 models: FLA 0.6.0's ``RWKV6Config``, ``RWKV6Model`` and ``RWKV6ForCausalLM`` on the shared
stack (fla.models.modeling) with RWKV's block: LayerNorms (a pre-norm on layer 0), time mixing
(``RWKV6Attention``) and channel mixing (``RWKV6FeedForward``, with its own token shift)."""

from __future__ import annotations

import torch.nn as nn

from fla.layers import Attention, RWKV6Attention
from fla.layers.rwkv6 import LerpLinear
from fla.layers.utils import layer_state, store_state
from fla.models.configuration import FLAConfig
from fla.models.modeling import FLAForCausalLM, FLAModel
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


class RWKV6Block(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        if config.norm_first and layer_idx == 0:
            self.pre_norm = rwkv_norm(config)
        self.attn_norm = rwkv_norm(config)
        attn = config.attn
        if attn is not None and layer_idx in attn["layers"]:
            self.attn = Attention(hidden_size=config.hidden_size, num_heads=attn["num_heads"],
                                  num_kv_heads=attn.get("num_kv_heads"), window_size=attn.get("window_size"),
                                  rope_theta=attn.get("rope_theta", 10000.0), layer_idx=layer_idx)
        else:
            self.attn = RWKV6Attention(mode=config.attn_mode, hidden_size=config.hidden_size,
                                       expand_k=config.expand_k, expand_v=config.expand_v,
                                       num_heads=config.num_heads, proj_low_rank_dim=config.proj_low_rank_dim,
                                       gate_low_rank_dim=config.gate_low_rank_dim, norm_eps=config.norm_eps,
                                       fuse_norm=config.fuse_norm, layer_idx=layer_idx)
        self.ffn_norm = rwkv_norm(config)
        self.ffn = RWKV6FeedForward(config.hidden_size, config.hidden_ratio, config.intermediate_size,
                                    config.hidden_act, layer_idx)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, **kwargs):
        residual = self.pre_norm(hidden_states) if hasattr(self, "pre_norm") else hidden_states
        out = self.attn(self.attn_norm(residual), attention_mask=attention_mask, past_key_values=past_key_values,
                        use_cache=use_cache, **kwargs)
        hidden_states = residual + out[0]
        hidden_states = hidden_states + self.ffn(self.ffn_norm(hidden_states), attention_mask, past_key_values,
                                                 use_cache)
        return (hidden_states, None, past_key_values)


class RWKV6Model(FLAModel):
    config_class = RWKV6Config
    _no_split_modules = ["RWKV6Block"]
    block_class = RWKV6Block
    make_final_norm = staticmethod(rwkv_norm)


class RWKV6ForCausalLM(FLAForCausalLM):
    config_class = RWKV6Config
    _no_split_modules = ["RWKV6Block"]
    model_class = RWKV6Model
