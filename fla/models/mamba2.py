"""Mamba2 models: FLA 0.6.0's ``Mamba2Config``, ``Mamba2Model`` and ``Mamba2ForCausalLM`` on the
shared stack (fla.models.modeling), with Mamba2's own block (norm, mixer; no MLP) and names
(``backbone``, ``norm_f``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers import Mamba2
from fla.models.configuration import FLAConfig
from fla.models.modeling import model_classes
from fla.modules import RMSNorm


class Mamba2Config(FLAConfig):
    model_type = "mamba2"
    defaults = dict(hidden_size=2048, state_size=128, num_hidden_layers=48, norm_eps=1e-5, conv_kernel=4,
                    conv_init=None, expand=2, A_init_range=(1, 16), use_bias=False, use_conv_bias=True,
                    hidden_act="silu", dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, rescale_prenorm_residual=True,
                    residual_in_fp32=True, n_groups=1, head_dim=64, num_heads=64, rmsnorm=True, D_has_hdim=False,
                    norm_before_gate=False, chunk_size=256, dt_limit=(0.0, float("inf")))

    def __init__(self, pad_token_id=0, **kwargs):  # (Mamba2's pad token is 0, the others' None)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if self.attn is not None:
            raise NotImplementedError("Mamba2 models take no `attn` layers")


class Mamba2Block(nn.Module):
    """norm -> mixer (Mamba2), a residual around it."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx, self.residual_in_fp32 = config, layer_idx, config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, dtype=torch.float32)
        self.mixer = Mamba2(num_heads=config.num_heads, head_dim=config.head_dim, hidden_size=config.hidden_size,
                            state_size=config.state_size, expand=config.expand, n_groups=config.n_groups,
                            conv_kernel=config.conv_kernel, conv_init=config.conv_init,
                            use_conv_bias=config.use_conv_bias, hidden_act=config.hidden_act,
                            A_init_range=config.A_init_range, D_has_hdim=config.D_has_hdim, rmsnorm=config.rmsnorm,
                            norm_before_gate=config.norm_before_gate, chunk_size=config.chunk_size,
                            dt_limit=tuple(config.dt_limit), dt_min=config.dt_min, dt_max=config.dt_max,
                            dt_init_floor=config.dt_init_floor, use_bias=config.use_bias, norm_eps=config.norm_eps,
                            layer_idx=layer_idx)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, **kwargs):
        out = self.mixer(self.norm(hidden_states).to(hidden_states.dtype), attention_mask=attention_mask,
                         past_key_values=past_key_values, use_cache=use_cache, **kwargs)[0]
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        return ((residual + out).to(hidden_states.dtype), None, past_key_values)


Mamba2Model, Mamba2ForCausalLM = model_classes(
    "Mamba2", Mamba2Config, Mamba2Block, __name__, base_model_prefix="backbone",
    causal__tied_weights_keys={"lm_head.weight": "backbone.embeddings.weight"}, model_final_norm_name="norm_f")
