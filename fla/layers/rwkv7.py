"""RWKV-7 "Goose" time mixing (Peng et al., 2025): a diagonal-plus-low-rank transition
S_t = (diag(exp(w_t)) - kk_t (kk_t * a_t)^T) S_(t-1) + k_t v_t^T with w_t = -exp(-1/2)
sigmoid(.), the value residual v_first from the first layer, a per-head bonus r_k.
FLA 0.6.0's ``RWKV7Attention``."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

import fla.ops.rwkv7 as rwkv7_ops
from fla.layers.rwkv6 import LoRA
from fla.layers.utils import layer_state, repad, store_state, unpad
from fla.modules import GroupNorm, l2norm
from fla.modules.token_shift import last_tokens, token_shift

MODES = ("chunk", "fused_recurrent")
W_SCALE = math.exp(-0.5)  # the log decay lies in (-exp(-1/2), 0)


def _low_rank(given, hidden_size, factor, scale):
    return given if given is not None else max(32, int(round(scale * hidden_size ** 0.5 * factor / 32) * 32))


class RWKV7Attention(nn.Module):
    """RWKV-7 time mixing with FLA's arguments and parameter names (``head_dim`` or
    ``num_heads``; the low-rank dims default as FLA's; ``fuse_norm`` picks fla's GroupNorm over
    torch's). forward(..., v_first=None, cu_seqlens=None) -> (o, None, past_key_values,
    v_first): layer 0 returns its values as v_first, later layers mix them in. Padding is
    packed away and the token shift runs per sequence from the cached last token. With
    ``layer_idx`` and ``num_hidden_layers`` the parameters start at RWKV-7's per-layer init.
    States [N, H, dk, dv]."""

    def __init__(self, mode: str = "chunk", hidden_size: int = 1024, head_dim: int | None = 64,
                 num_heads: int | None = None, decay_low_rank_dim: int | None = None,
                 gate_low_rank_dim: int | None = None, a_low_rank_dim: int | None = None,
                 v_low_rank_dim: int | None = None, elementwise_affine: bool | None = True, norm_eps: float = 1e-5,
                 layer_idx: int = None, fuse_norm: bool = False, value_dim: int = None,
                 num_hidden_layers: int = None, **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if head_dim is None and num_heads is None:
            raise ValueError("give `head_dim` or `num_heads`")
        self.mode, self.hidden_size, self.key_dim = mode, hidden_size, hidden_size
        self.value_dim = hidden_size if value_dim is None else value_dim
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_heads
        self.num_heads = hidden_size // self.head_dim
        if self.num_heads * self.head_dim != hidden_size or self.value_dim % self.num_heads:
            raise ValueError(f"the heads must divide `hidden_size` ({hidden_size}) and the value dim "
                             f"({self.value_dim})")
        self.head_v_dim = self.value_dim // self.num_heads
        factor = self.head_dim / 64
        self.decay_low_rank_dim = _low_rank(decay_low_rank_dim, hidden_size, factor, 2.5)
        self.gate_low_rank_dim = _low_rank(gate_low_rank_dim, hidden_size, 1.0, 5)
        self.a_low_rank_dim = _low_rank(a_low_rank_dim, hidden_size, factor, 2.5)
        self.v_low_rank_dim = _low_rank(v_low_rank_dim, hidden_size, factor, 1.7)
        self.layer_idx, self.num_hidden_layers, self.fuse_norm = layer_idx, num_hidden_layers, fuse_norm
        self.time_shift = nn.ZeroPad2d((0, 0, 1, -1))  # (FLA's submodule; token_shift does the work)
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, hidden_size)))
        self.k_k, self.k_a = nn.Parameter(torch.zeros(self.key_dim)), nn.Parameter(torch.zeros(self.key_dim))
        self.r_k = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))
        self.r_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.w_lora = LoRA(hidden_size, self.key_dim, self.decay_low_rank_dim, activation="tanh")
        if layer_idx != 0:
            self.v_lora = LoRA(hidden_size, self.value_dim, self.v_low_rank_dim, activation=None)
        self.a_lora = LoRA(hidden_size, self.key_dim, self.a_low_rank_dim, activation=None)
        self.g_lora = LoRA(hidden_size, self.value_dim, self.gate_low_rank_dim, activation="sigmoid", bias=False)
        eps = self.head_dim * norm_eps
        self.g_norm = (GroupNorm(self.num_heads, self.value_dim, elementwise_affine=elementwise_affine, eps=eps,
                                 bias=True) if fuse_norm else
                       nn.GroupNorm(self.num_heads, self.value_dim, eps=eps, affine=elementwise_affine))
        if layer_idx is not None and num_hidden_layers is not None:
            self._init_per_layer()

    @torch.no_grad()
    def _init_per_layer(self):
        """RWKV-7's initialisation for layer ``layer_idx`` of ``num_hidden_layers``."""
        L, i, C, hd = self.num_hidden_layers, self.layer_idx, self.hidden_size, self.head_dim
        to_one = i / (L - 1) if L > 1 else 0.0
        to_zero = 1.0 - i / L
        n = torch.arange(C, dtype=torch.float32)
        linear = n / (C - 1) - 0.5
        zigzag = ((n % hd) - (hd - 1) / 2) / ((hd - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        ddd = (n / C)[None, None]
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            getattr(self, name).copy_(1.0 - ddd ** (power * to_zero))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        self.k_k.copy_(0.71 - linear * 0.1)
        self.w_lora.set_bias_value(-6 + 6 * (n / (C - 1)) ** (1 + to_one ** 0.3) + 0.5 + zigzag * 2.5)
        self.a_lora.set_bias_value(-0.19 + zigzag * 0.3 + linear * 0.4)
        if i != 0:
            v_linear = torch.arange(self.value_dim, dtype=torch.float32) / max(self.value_dim - 1, 1) - 0.5
            self.v_lora.set_bias_value(0.73 - v_linear * 0.4)
        if self.g_norm.weight is not None:
            self.g_norm.weight.fill_(((i + 1) / L) ** 0.7)
        for proj, gain in ((self.r_proj, 1.0), (self.k_proj, 0.1), (self.v_proj, 1.0)):
            nn.init.orthogonal_(proj.weight, gain=gain)
        self.o_proj.weight.zero_()

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, v_first=None, cu_seqlens=None, **kwargs):
        if output_attentions:
            raise NotImplementedError("RWKV7Attention has no attention weights to output")
        B, T, _ = hidden_states.shape
        state = layer_state(self, past_key_values)
        x, indices, cu = unpad(hidden_states, attention_mask, cu_seqlens)
        shift_cache = state["conv_state"] if state is not None else None
        delta = token_shift(x, cu, shift_cache)
        xr, xw, xk, xv, xa, xg = (x + delta * getattr(self, n) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        w = -W_SCALE * self.w_lora(xw).float().sigmoid()
        if self.layer_idx == 0:
            v_first_out = v
        else:
            if v_first is None:
                raise ValueError("RWKV7Attention past layer 0 needs `v_first` (layer 0's values)")
            v_first_in = v_first if indices is None else v_first.flatten(0, 1).index_select(0, indices)[None]
            v = torch.lerp(v, v_first_in.to(v.dtype), self.v_lora(xv).sigmoid())
            v_first_out = None
        a = self.a_lora(xa).sigmoid()
        g = self.g_lora(xg)
        kk = l2norm(rearrange(k * self.k_k, "... (h d) -> ... h d", d=self.head_dim))
        k = k * (1 + (a - 1) * self.k_a)
        r, w, k, a = (rearrange(t, "... (h d) -> ... h d", d=self.head_dim) for t in (r, w, k, a))
        v = rearrange(v, "... (h d) -> ... h d", d=self.head_v_dim)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(scale=1.0, initial_state=h0, output_final_state=use_cache, cu_seqlens=cu)
        kernel = rwkv7_ops.fused_recurrent_rwkv7
        if T > 64 or torch.is_grad_enabled():
            kernel = rwkv7_ops.chunk_rwkv7
        o, recurrent_state = kernel(r, w, k, v, -kk, kk * a, **common)
        store_state(self, past_key_values, recurrent_state=recurrent_state,
                    conv_state=last_tokens(x, cu, shift_cache) if use_cache else None, offset=T)
        o = rearrange(o, "... h d -> ... (h d)")
        o = self.g_norm(o) if self.fuse_norm else self.g_norm(o.flatten(0, 1)).view_as(o)
        bonus = ((r * k * self.r_k).sum(-1, keepdim=True) * v).flatten(-2)
        o = self.o_proj(((o + bonus) * g).to(x.dtype))
        if v_first_out is not None:
            v_first = repad(v_first_out, indices, B, T)
        return repad(o, indices, B, T), None, past_key_values, v_first
