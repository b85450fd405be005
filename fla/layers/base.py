"""What the q/k/v token-mixing layers share: head dims from FLA's expand ratios and grouped
heads, the projections with optional short convolutions, the output gate and norm, and the
forward pass around a family's mixing step (padding packed away, cache read and written)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from fla.layers.utils import layer_state, repad, store_state, unpad
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution


def dt_bias_init(n, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4):
    """Mamba's dt bias [n]: softplus^-1 of dt drawn log-uniformly in [dt_min, dt_max]."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp_min(dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class QKVLayer(nn.Module):
    """A token-mixing layer with input projections (q, k, v, or a family's own). A family sets
    its parameters in __init__ through ``_init_dims``, ``_init_qkv`` (or ``_init_projections``)
    and ``_init_readout`` and implements ``_mix(x, *projections, state, use_cache, cu_seqlens,
    context) -> (o [1 or B, T, H, dv], recurrent state)``. With ``silu_without_conv`` the
    projections go through silu when there are no short convolutions (which apply it). forward(hidden_states [B, T, hidden_size], attention_mask [B, S] 0/1
    padding, past_key_values (fla.models.Cache), use_cache) -> (o, None, past_key_values)."""

    silu_without_conv = False

    def _init_dims(self, hidden_size, expand_k, expand_v, num_heads, num_kv_heads):
        self.hidden_size, self.expand_k, self.expand_v, self.num_heads = hidden_size, expand_k, expand_v, num_heads
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if self.num_kv_heads < 1 or num_heads % self.num_kv_heads:
            raise ValueError(f"`num_kv_heads` ({self.num_kv_heads}) must divide `num_heads` ({num_heads})")
        self.num_kv_groups = num_heads // self.num_kv_heads
        key_dim, value_dim = hidden_size * expand_k, hidden_size * expand_v
        self.key_dim, self.value_dim = round(key_dim), round(value_dim)
        for name, exact, dim in (("expand_k", key_dim, self.key_dim), ("expand_v", value_dim, self.value_dim)):
            if not math.isclose(exact, dim) or dim % num_heads:
                raise ValueError(f"`hidden_size * {name}` ({exact}) must be an integer divisible by `num_heads` "
                                 f"({num_heads})")
        self.key_dim_per_group = self.key_dim // self.num_kv_groups
        self.value_dim_per_group = self.value_dim // self.num_kv_groups
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads

    def _init_head_dims(self, hidden_size, head_dim, num_heads, num_v_heads, expand_v):
        """The delta-rule layers' dims: ``num_heads`` q/k heads of ``head_dim``, ``num_v_heads``
        (a multiple; grouped value heads) value heads of head_dim * ``expand_v``."""
        self.hidden_size, self.expand_v, self.head_dim, self.num_heads = hidden_size, expand_v, head_dim, num_heads
        self.num_v_heads = num_heads if num_v_heads is None else num_v_heads
        if self.num_v_heads % num_heads:
            raise ValueError(f"`num_v_heads` ({self.num_v_heads}) must be a multiple of `num_heads` ({num_heads})")
        self.head_k_dim, self.head_v_dim = head_dim, int(head_dim * expand_v)
        if not math.isclose(head_dim * expand_v, self.head_v_dim):
            raise ValueError(f"`head_dim * expand_v` ({head_dim * expand_v}) must be an integer")
        self.key_dim, self.value_dim = num_heads * head_dim, self.num_v_heads * self.head_v_dim

    def _init_projections(self, dims, use_short_conv, conv_size, conv_bias, conv_activation="silu",
                          conv_activations=None):
        """``<name>_proj`` (no bias) to dims[name] features for each name, in order, and with
        ``use_short_conv`` a ``<name>_conv1d`` after each (activation ``conv_activations[name]``,
        else ``conv_activation``)."""
        self.projections = tuple(dims)
        for name, dim in dims.items():
            setattr(self, f"{name}_proj", nn.Linear(self.hidden_size, dim, bias=False))
        self.use_short_conv, self.conv_size, self.conv_bias = use_short_conv, conv_size, conv_bias
        if use_short_conv:
            for name, dim in dims.items():
                act = (conv_activations or {}).get(name, conv_activation)
                setattr(self, f"{name}_conv1d", ShortConvolution(dim, conv_size, bias=conv_bias, activation=act))

    def _init_qkv(self, use_short_conv, conv_size, conv_bias):
        self._init_projections(dict(q=self.key_dim, k=self.key_dim_per_group, v=self.value_dim_per_group),
                               use_short_conv, conv_size, conv_bias)

    def _init_readout(self, use_output_gate, gate_fn, fuse_norm, elementwise_affine, norm_eps, activations):
        """g_proj (with ``use_output_gate``), the per-head norm fused with a swish gate
        (g_norm_swish_gate) or apart (g_norm, in fp32, and ``activations[gate_fn]``), o_proj."""
        self.use_output_gate = use_output_gate
        if use_output_gate:
            self.g_proj = nn.Linear(self.hidden_size, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, self.hidden_size, bias=False)
        self.fuse_norm_and_gate = gate_fn == "swish" and fuse_norm and use_output_gate
        if self.fuse_norm_and_gate:
            self.g_norm_swish_gate = FusedRMSNormGated(self.head_v_dim, elementwise_affine, norm_eps)
        else:
            self.g_norm = RMSNorm(self.head_v_dim, elementwise_affine, eps=norm_eps, dtype=torch.float32)
            self.gate_fn = activations[gate_fn]

    def _init_o_norm_readout(self, use_gate, norm_eps, activation="swish"):
        """The delta-rule layers' readout: a per-head norm ``o_norm``, gated by ``g_proj`` (with
        ``use_gate``, activation swish or sigmoid), then o_proj (see _o_norm_readout)."""
        self.use_gate = use_gate
        if use_gate:
            self.g_proj = nn.Linear(self.hidden_size, self.value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps, activation=activation)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps, dtype=torch.float32)
        self.o_proj = nn.Linear(self.value_dim, self.hidden_size, bias=False)

    def _o_norm_readout(self, o, x):
        if self.use_gate:
            o = self.o_norm(o, rearrange(self.g_proj(x), "... (h d) -> ... h d", d=self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(rearrange(o, "... h d -> ... (h d)").to(x.dtype))

    def _split_heads(self, q, k, v):
        """q, k [.., *] and v [.., *] split into heads of head_k_dim and head_v_dim (no repeat:
        the kernels take grouped value heads)."""
        q, k = (rearrange(y, "... (h d) -> ... h d", d=self.head_k_dim) for y in (q, k))
        return q, k, rearrange(v, "... (h d) -> ... h d", d=self.head_v_dim)

    def _heads(self, q, k, v, *per_key):
        """q [.., key_dim] and k, v, per-key gates [.., *_per_group] split into heads, the grouped
        ones repeated to every head: [.., num_heads, head dim]."""
        q = rearrange(q, "... (h d) -> ... h d", d=self.head_k_dim)
        g = self.num_kv_groups
        k, *per_key = (repeat(x, "... (h d) -> ... (h g) d", g=g, d=self.head_k_dim) for x in (k, *per_key))
        v = repeat(v, "... (h d) -> ... (h g) d", g=g, d=self.head_v_dim)
        return (q, k, v, *per_key)

    def _project(self, x, state, use_cache, cu_seqlens):
        """(one tensor per projection, conv states or None) of packed or padded x [B, T, hidden_size]."""
        out = [getattr(self, f"{name}_proj")(x) for name in self.projections]
        if not self.use_short_conv:
            return ([F.silu(y) for y in out] if self.silu_without_conv else out), None
        caches = state["conv_state"] if state is not None and state["conv_state"] is not None else \
            (None,) * len(out)
        finals = []
        for i, (name, cache) in enumerate(zip(self.projections, caches)):
            out[i], final = getattr(self, f"{name}_conv1d")(out[i], cache=cache, output_final_state=use_cache,
                                                            cu_seqlens=cu_seqlens)
            finals.append(final)
        return out, (tuple(finals) if use_cache else None)

    def _readout(self, o, x):
        """The per-head norm and output gate of o [.., H, dv], then o_proj: [.., hidden_size]."""
        if self.use_output_gate:
            g = self.g_proj(x)
            if self.fuse_norm_and_gate:
                o = self.g_norm_swish_gate(o, rearrange(g, "... (h d) -> ... h d", d=self.head_v_dim))
                o = rearrange(o, "... h d -> ... (h d)")
            else:
                o = rearrange(self.g_norm(o), "... h d -> ... (h d)") * self.gate_fn(g)
        else:
            o = rearrange(self.g_norm(o), "... h d -> ... (h d)")
        return self.o_proj(o.to(x.dtype))

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, **kwargs):
        if output_attentions:
            raise NotImplementedError(f"{type(self).__name__} has no attention weights to output")
        B, T = hidden_states.shape[:2]
        state = layer_state(self, past_key_values)
        x, indices, cu_seqlens = unpad(hidden_states, attention_mask, kwargs.get("cu_seqlens"))
        projected, conv_state = self._project(x, state, use_cache, cu_seqlens)
        context = dict(attention_mask=attention_mask, past_key_values=past_key_values, seq_len=T, kwargs=kwargs)
        o, recurrent_state = self._mix(x, *projected, state, use_cache, cu_seqlens, context)
        store_state(self, past_key_values, recurrent_state=recurrent_state, conv_state=conv_state, offset=T)
        return repad(self._readout(o, x), indices, B, T), None, past_key_values
