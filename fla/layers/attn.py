"""Softmax attention for hybrid models: rotary positions, grouped key/value heads, an optional
sliding window, padded or packed batches and a key/value cache. FLA 0.6.0's ``Attention`` (which
needs flash-attn); here through torch's scaled_dot_product_attention, or flash-attn when it is
installed."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from fla.layers.utils import layer_state
from fla.modules import RMSNorm, RotaryEmbedding


def _allowed(Tq, Tk, window, device):
    """[Tq, Tk] causal (aligned at the end: query i is key i + Tk - Tq) within the last
    ``window`` keys."""
    i = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)
    j = torch.arange(Tk, device=device)[None, :]
    m = j <= i
    return m & (i - j < window) if window is not None else m


def attend(q, k, v, window=None, key_mask=None):
    """Causal softmax attention of q [B, Tq, H, D] over k, v [B, Tk, HK, D] (Tk >= Tq, the queries
    being the last Tq positions), each query seeing at most ``window`` keys back, itself
    included; ``key_mask`` [B, Tk] bool drops padded keys. Queries with no key left give 0.
    Returns [B, Tq, H, D]."""
    B, Tq, H, D = q.shape
    Tk, HK = k.shape[1], k.shape[2]
    if H != HK:
        k, v = (x.repeat_interleave(H // HK, 2) for x in (k, v))
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    mask = _allowed(Tq, Tk, window, q.device)[None, None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = torch.where(mask.any(-1, keepdim=True), o, 0.0)  # (a row without keys is NaN in SDPA)
    return o.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head causal softmax attention with FLA's arguments and parameter names: q_proj,
    k_proj, v_proj (``qkv_bias``), o_proj, optional per-head RMSNorms of q and k (``qk_norm``),
    rotary embeddings of base ``rope_theta``, ``num_kv_heads`` key/value heads, a sliding
    ``window_size``. forward(hidden_states [B, T, hidden_size], attention_mask [B, S] 0/1 padding,
    past_key_values (fla.models.Cache), output_attentions, use_cache) -> (o, None, cache);
    packed sequences through ``cu_seqlens`` [N + 1] (B = 1, without a filled cache)."""

    def __init__(self, hidden_size: int = 2048, num_heads: int = 32, num_kv_heads: int | None = None,
                 qkv_bias: bool = False, qk_norm: bool = False, window_size: int | None = None,
                 rope_theta: float | None = 10000.0, max_position_embeddings: int | None = None,
                 layer_idx: int = None):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if hidden_size % num_heads or num_heads % self.num_kv_heads:
            raise ValueError(f"`num_heads` ({num_heads}) must divide `hidden_size` ({hidden_size}), and "
                             f"`num_kv_heads` ({self.num_kv_heads}) `num_heads`")
        if window_size is not None and window_size < 1:
            raise ValueError(f"`window_size` must be positive, got {window_size}")
        self.num_kv_groups = num_heads // self.num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.kv_dim = self.num_kv_heads * self.head_dim
        self.qkv_bias, self.qk_norm, self.window_size = qkv_bias, qk_norm, window_size
        self.rope_theta, self.max_position_embeddings, self.layer_idx = rope_theta, max_position_embeddings, layer_idx
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        if qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.rotary = RotaryEmbedding(dim=self.head_dim, base=rope_theta)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, output_attentions=False,
                use_cache=False, **kwargs):
        if output_attentions:
            raise NotImplementedError("Attention does not return attention weights")
        B, T, _ = hidden_states.shape
        if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[0] != B):
            raise ValueError(f"`attention_mask` must be a 0/1 padding mask [batch, seq_len], got "
                             f"{list(attention_mask.shape)}")
        q = rearrange(self.q_proj(hidden_states), "... (h d) -> ... h d", d=self.head_dim)
        k = rearrange(self.k_proj(hidden_states), "... (h d) -> ... h d", d=self.head_dim)
        v = rearrange(self.v_proj(hidden_states), "... (h d) -> ... h d", d=self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cu_seqlens = kwargs.get("cu_seqlens")
        state = layer_state(self, past_key_values)
        cached = state["attn_state"] if state is not None else None
        seen = past_key_values.get_seq_length(self.layer_idx) if past_key_values is not None else 0
        if cu_seqlens is not None and seen:
            raise ValueError("`cu_seqlens` (packed sequences) cannot continue a filled cache")
        offset = seen  # position of row t: t + seen, less the padding before it (left padding)
        if attention_mask is not None and cu_seqlens is None:
            offset = seen - (attention_mask == 0).sum(-1)
        longest = T + (offset if isinstance(offset, int) else int(offset.max()))
        q, k = self.rotary(q, k, seqlen_offset=offset, max_seqlen=max(longest, self.max_position_embeddings or 0),
                           cu_seqlens=cu_seqlens)
        if past_key_values is not None:
            past_key_values.update(attn_state=(k.flatten(-2), v.flatten(-2)), layer_idx=self.layer_idx, offset=T,
                                   cache_kwargs=dict(window_size=self.window_size))
        if cached is not None:  # the keys before this call (the cache's window), then the new ones
            k = torch.cat([rearrange(cached[0], "... (h d) -> ... h d", d=self.head_dim), k], 1)
            v = torch.cat([rearrange(cached[1], "... (h d) -> ... h d", d=self.head_dim), v], 1)
        if cu_seqlens is not None:
            bounds = cu_seqlens.tolist()
            o = torch.cat([attend(q[:, a:b], k[:, a:b], v[:, a:b], self.window_size)
                           for a, b in zip(bounds[:-1], bounds[1:])], 1)
        else:
            key_mask = None
            if attention_mask is not None:
                mask = attention_mask.bool()
                Tk = k.shape[1]
                key_mask = (mask[:, -Tk:] if mask.shape[1] >= Tk else
                            F.pad(mask, (Tk - mask.shape[1], 0), value=True))
            o = attend(q, k, v, self.window_size, key_mask)
            if attention_mask is not None:
                o = o * attention_mask[:, -T:, None, None].to(o.dtype)  # padded queries give 0
        return self.o_proj(o.reshape(B, T, -1)), None, past_key_values
