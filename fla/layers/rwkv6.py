"""RWKV-6 "Finch" time mixing (Peng et al., 2024): data-dependent token-shift interpolation
(ddlerp) for r, w, k, v and the gate, a per-key decay w = -exp(w_proj(.)), the bonus u for the
current token. FLA 0.6.0's ``RWKV6Attention``."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from fla.layers.utils import layer_state, repad, store_state, unpad
from fla.modules import GroupNorm
from fla.modules.activations import ACT2FN
from fla.modules.token_shift import last_tokens, token_shift
from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

MODES = ("chunk", "fused_recurrent")


class LoRA(nn.Module):
    """lora.2(act(lora.0(x))): a low-rank map (``lora.0`` starts at 0, ``lora.2`` orthogonal x 0.1)."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int, bias: bool | None = True,
                 activation: str | None = "tanh"):
        super().__init__()
        acts = {None: nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"`activation` must be one of {list(acts)}, got {activation!r}")
        self.input_dim, self.output_dim, self.low_rank_dim, self.bias = input_dim, output_dim, low_rank_dim, bias
        self.activation = acts[activation]()
        self.lora = nn.Sequential(nn.Linear(input_dim, low_rank_dim, bias=False), self.activation,
                                  nn.Linear(low_rank_dim, output_dim, bias=bias))
        nn.init.zeros_(self.lora[0].weight)
        gain = math.sqrt(low_rank_dim / output_dim) if low_rank_dim > output_dim else 1
        nn.init.orthogonal_(self.lora[2].weight, gain=gain * 0.1)
        if bias:
            nn.init.zeros_(self.lora[2].bias)

    def set_bias_value(self, value):
        """Set the output bias (a tensor or a number), as RWKV's initialisations do."""
        if self.lora[2].bias is not None:
            with torch.no_grad():
                self.lora[2].bias.copy_(torch.as_tensor(value, dtype=self.lora[2].bias.dtype).expand_as(
                    self.lora[2].bias))

    def forward(self, x):
        return self.lora(x)


class LerpLinear(nn.Module):
    """linear(x + delta * mu): the token shift by a learned interpolation ``mu`` [input_dim]."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int | None = None):
        super().__init__()
        self.input_dim, self.output_dim, self.low_rank_dim = input_dim, output_dim, low_rank_dim
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))  # (FLA's submodule; token_shift does the work)
        self.linear = (nn.Linear(input_dim, output_dim, bias=False) if low_rank_dim is None else
                       LoRA(input_dim, output_dim, low_rank_dim))
        self.mu = nn.Parameter(torch.zeros(input_dim))

    def forward(self, x, delta=None, cu_seqlens=None):
        return self.linear(x + (token_shift(x, cu_seqlens) if delta is None else delta) * self.mu)


class DDLerpLinear(nn.Module):
    """linear(x + delta * mu) with a data-dependent ``mu`` given per token."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int | None = None):
        super().__init__()
        self.input_dim, self.output_dim, self.low_rank_dim = input_dim, output_dim, low_rank_dim
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.linear = (nn.Linear(input_dim, output_dim, bias=False) if low_rank_dim is None else
                       LoRA(input_dim, output_dim, low_rank_dim))

    def forward(self, x, mu, delta=None, cu_seqlens=None):
        return self.linear(x + (token_shift(x, cu_seqlens) if delta is None else delta) * mu)


class RWKV6Attention(nn.Module):
    """RWKV-6 time mixing with FLA's arguments and parameter names. Padding is packed away
    (``attention_mask``) and the token shift runs per sequence, from the cached last token
    (``conv_state`` [N, hidden_size]) when decoding. Inputs of at most 64 tokens run token by
    token, longer ones by ``mode``. States [N, H, dk, dv]."""

    def __init__(self, mode: str = "chunk", hidden_size: int = 1024, expand_k: float = 0.5, expand_v: float = 1.0,
                 num_heads: int = 4, gate_fn: str = "swish", proj_low_rank_dim: int = 32,
                 gate_low_rank_dim: int = 64, fuse_norm: bool = True, elementwise_affine: bool = True,
                 norm_eps: float = 1e-5, layer_idx: int = None, **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        self.mode, self.hidden_size, self.expand_k, self.expand_v, self.num_heads = \
            mode, hidden_size, expand_k, expand_v, num_heads
        self.proj_low_rank_dim, self.gate_low_rank_dim, self.layer_idx = proj_low_rank_dim, gate_low_rank_dim, layer_idx
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(f"`num_heads` ({num_heads}) must divide the key ({self.key_dim}) and value "
                             f"({self.value_dim}) dims")
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))
        self.x_proj = nn.Sequential(LerpLinear(hidden_size, proj_low_rank_dim * 5), nn.Tanh(),
                                    nn.Linear(proj_low_rank_dim * 5, hidden_size, bias=False))
        self.x_bias = nn.Parameter(torch.zeros(5, hidden_size))
        self.r_proj = DDLerpLinear(hidden_size, self.key_dim)
        self.w_proj = DDLerpLinear(hidden_size, self.key_dim, low_rank_dim=gate_low_rank_dim)
        self.k_proj = DDLerpLinear(hidden_size, self.key_dim)
        self.v_proj = DDLerpLinear(hidden_size, self.value_dim)
        self.g_proj = DDLerpLinear(hidden_size, self.value_dim)
        self.bonus = nn.Parameter(torch.zeros(num_heads, self.head_k_dim))
        self.g_norm = GroupNorm(num_heads, self.value_dim, elementwise_affine=elementwise_affine, bias=True,
                                eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.gate_fn = ACT2FN[gate_fn]
        low_rank = {id(lin) for m in self.modules() if isinstance(m, LoRA) for lin in m.lora}
        for m in self.modules():  # FLA's init of the full-rank projections
            if isinstance(m, nn.Linear) and id(m) not in low_rank:
                nn.init.xavier_uniform_(m.weight, gain=2 ** -2.5)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, cu_seqlens=None, **kwargs):
        if output_attentions:
            raise NotImplementedError("RWKV6Attention has no attention weights to output")
        B, T, D = hidden_states.shape
        state = layer_state(self, past_key_values)
        x, indices, cu = unpad(hidden_states, attention_mask, cu_seqlens)
        shift_cache = state["conv_state"] if state is not None else None
        delta = token_shift(x, cu, shift_cache)
        mix = self.x_proj[0](x, delta).view(*x.shape[:2], 5, self.proj_low_rank_dim)
        mix = torch.einsum("btnr,hnr->btnh", self.x_proj[1](mix), self.x_proj[2].weight.view(D, 5, -1))
        r, w, k, v, g = (mix + self.x_bias).unbind(-2)
        r, w, k = (proj(x, mu, delta) for proj, mu in ((self.r_proj, r), (self.w_proj, w), (self.k_proj, k)))
        v, g = self.v_proj(x, v, delta), self.g_proj(x, g, delta)
        r, w, k = (rearrange(t, "... (h d) -> ... h d", d=self.head_k_dim) for t in (r, w, k))
        v = rearrange(v, "... (h d) -> ... h d", d=self.head_v_dim)
        w = -torch.exp(w.float())
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(w=w, u=self.bonus, scale=1.0, initial_state=h0, output_final_state=use_cache, cu_seqlens=cu)
        kernel = fused_recurrent_rwkv6 if T <= 64 or self.mode == "fused_recurrent" else chunk_rwkv6
        o, recurrent_state = kernel(r, k, v, **common)
        store_state(self, past_key_values, recurrent_state=recurrent_state,
                    conv_state=last_tokens(x, cu, shift_cache) if use_cache else None, offset=T)
        o = self.g_norm(rearrange(o, "... h d -> ... (h d)")) * self.gate_fn(g)
        return repad(self.o_proj(o.to(x.dtype)), indices, B, T), None, past_key_values
