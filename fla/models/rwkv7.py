"""RWKV-7 models: FLA 0.6.0's ``RWKV7Config``, ``RWKV7Model`` and ``RWKV7ForCausalLM`` on the shared
stack (fla.models.modeling) with RWKV's block (fla.models.rwkv6's norms), time mixing
(``RWKV7Attention``, layer 0's values handed to the later layers as v_first) and channel mixing
(``RWKV7FeedForward``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers import Attention, RWKV7Attention
from fla.layers.utils import layer_state, store_state
from fla.models.configuration import FLAConfig
from fla.models.modeling import FLAForCausalLM, FLAModel
from fla.models.rwkv6 import rwkv_norm
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


class RWKV7Block(nn.Module):
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
            self.attn = RWKV7Attention(mode=config.attn_mode, hidden_size=config.hidden_size,
                                       head_dim=config.head_dim, num_heads=config.num_heads,
                                       decay_low_rank_dim=config.decay_low_rank_dim,
                                       gate_low_rank_dim=config.gate_low_rank_dim,
                                       a_low_rank_dim=config.a_low_rank_dim, v_low_rank_dim=config.v_low_rank_dim,
                                       norm_eps=config.norm_eps, fuse_norm=config.fuse_norm, layer_idx=layer_idx,
                                       value_dim=config.value_dim[layer_idx],
                                       num_hidden_layers=config.num_hidden_layers)
        self.ffn_norm = rwkv_norm(config)
        self.ffn = RWKV7FeedForward(config.hidden_size, config.hidden_ratio, config.intermediate_size,
                                    config.hidden_act, layer_idx, config.num_hidden_layers)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, v_first=None, **kwargs):
        residual = self.pre_norm(hidden_states) if hasattr(self, "pre_norm") else hidden_states
        mixing = dict(v_first=v_first) if isinstance(self.attn, RWKV7Attention) else {}
        out = self.attn(self.attn_norm(residual), attention_mask=attention_mask, past_key_values=past_key_values,
                        use_cache=use_cache, **mixing, **kwargs)
        hidden_states = residual + out[0]
        hidden_states = hidden_states + self.ffn(self.ffn_norm(hidden_states), attention_mask, past_key_values,
                                                 use_cache)
        return (hidden_states, None, past_key_values, out[3] if len(out) > 3 else v_first)


class RWKV7Model(FLAModel):
    config_class = RWKV7Config
    _no_split_modules = ["RWKV7Block"]
    block_class = RWKV7Block
    make_final_norm = staticmethod(rwkv_norm)


class RWKV7ForCausalLM(FLAForCausalLM):
    config_class = RWKV7Config
    _no_split_modules = ["RWKV7Block"]
    model_class = RWKV7Model
