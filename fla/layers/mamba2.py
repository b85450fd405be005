"""Mamba2 (Dao and Gu, 2024): the SSD recurrence h_t = exp(dt_t A) h_(t-1) + dt_t B_t x_t^T,
y_t = C_t^T h_t + D x_t, on the linear-attention kernels (q = C, k = dt B, v = x, log decay
dt A), after a causal conv over (x, B, C) and before a gated RMSNorm. FLA 0.6.0's ``Mamba2``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from fla.layers.base import dt_bias_init
from fla.layers.utils import layer_state, repad, store_state, unpad
from fla.modules.convolution import causal_conv1d
from fla.modules.layernorm_gated import RMSNormGated
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla


class Mamba2(nn.Module):
    """Mamba2's mixer with FLA's arguments and parameter names: in_proj to (z, x B C, dt),
    conv1d over x B C (``conv_kernel`` taps, ``hidden_act``), ``num_heads`` heads of ``head_dim``
    sharing ``n_groups`` groups of B and C (head h uses group h // (num_heads / n_groups)),
    dt = clamp(softplus(dt + dt_bias), ``dt_limit``), A = -exp(A_log), the skip D (per head, or
    per channel with ``D_has_hdim``), RMSNormGated (``rmsnorm``) or y * act(z), out_proj.
    Padding is packed away; the conv and SSM states are cached (conv_state [N, conv_dim, W],
    recurrent_state [N, H, head_dim, state_size]). ``chunk_size`` and ``backend`` are accepted
    for FLA compatibility (the kernels are flagen's: chunked for more than 64 tokens)."""

    def __init__(self, num_heads: int = None, head_dim: int = 64, hidden_size: int = 2048, state_size: int = 128,
                 expand: int = 2, n_groups: int = 1, conv_kernel: int = 4, conv_init: float | None = None,
                 use_conv_bias: bool = True, hidden_act: str = "silu", A_init_range: tuple = (1, 16),
                 D_has_hdim: bool = False, rmsnorm: bool = True, norm_before_gate: bool = False,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple = (0.0, float("inf")), use_bias: bool = False, norm_eps: float = 1e-5,
                 chunk_size: int = 256, layer_idx: int = None, backend: str = "cuda"):
        super().__init__()
        if hidden_act not in ("silu", "swish"):
            raise ValueError(f"`hidden_act` must be 'silu', got {hidden_act!r}")
        self.hidden_size, self.expand, self.head_dim, self.ssm_state_size = hidden_size, expand, head_dim, state_size
        self.intermediate_size = int(expand * hidden_size)
        self.num_heads = self.intermediate_size // head_dim if num_heads is None else num_heads
        if self.num_heads * head_dim != self.intermediate_size:
            raise ValueError(f"`num_heads * head_dim` ({self.num_heads} * {head_dim}) must equal expand * "
                             f"hidden_size ({self.intermediate_size})")
        if n_groups < 1 or self.num_heads % n_groups:
            raise ValueError(f"`n_groups` ({n_groups}) must divide the heads ({self.num_heads})")
        self.n_groups, self.conv_kernel_size, self.conv_init = n_groups, conv_kernel, conv_init
        self.use_conv_bias, self.activation, self.A_init_range = use_conv_bias, hidden_act, A_init_range
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.norm_eps, self.chunk_size, self.dt_limit = norm_eps, chunk_size, dt_limit
        self.dt_min, self.dt_max, self.use_bias, self.layer_idx = dt_min, dt_max, use_bias, layer_idx
        self.backend = "triton" if backend == "cuda" else backend  # (FLA's name when mamba_ssm is absent)
        self.conv_dim = self.intermediate_size + 2 * n_groups * state_size
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim,
                                padding=conv_kernel - 1, bias=use_conv_bias)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.in_proj = nn.Linear(hidden_size, self.intermediate_size + self.conv_dim + self.num_heads, bias=use_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(self.num_heads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.empty(self.num_heads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(self.intermediate_size if D_has_hdim else self.num_heads))
        self.dt_bias._no_weight_decay = self.A_log._no_weight_decay = self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.intermediate_size, eps=norm_eps, norm_before_gate=norm_before_gate,
                                     group_size=self.intermediate_size // n_groups)
        else:
            self.norm = None
        self.out_proj = nn.Linear(self.intermediate_size, hidden_size, bias=use_bias)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, **kwargs):
        if output_attentions:
            raise NotImplementedError("Mamba2 has no attention weights to output")
        B, T, _ = hidden_states.shape
        state = layer_state(self, past_key_values)
        x, indices, cu = unpad(hidden_states, attention_mask, kwargs.get("cu_seqlens"))
        z, xbc, dt = self.in_proj(x).split([self.intermediate_size, self.conv_dim, self.num_heads], -1)
        conv_cache = state["conv_state"] if state is not None else None
        xbc, conv_state = causal_conv1d(xbc, self.conv1d.weight[:, 0], self.conv1d.bias, None, conv_cache, use_cache,
                                        "silu", cu)
        xs, Bc, Cc = xbc.split([self.intermediate_size, self.n_groups * self.ssm_state_size,
                                self.n_groups * self.ssm_state_size], -1)
        xs = rearrange(xs, "... (h p) -> ... h p", p=self.head_dim)
        per_group = self.num_heads // self.n_groups
        Bc, Cc = (rearrange(t, "... (g n) -> ... g n", n=self.ssm_state_size).repeat_interleave(per_group, -2)
                  for t in (Bc, Cc))
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)
        g = dt * -torch.exp(self.A_log.float())  # [.., H] log decay
        k = Bc.float() * dt[..., None]
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(g=g, scale=1.0, initial_state=h0, output_final_state=use_cache, state_v_first=True,
                      cu_seqlens=cu)
        kernel = fused_recurrent_simple_gla if T <= 64 else chunk_simple_gla
        y, recurrent_state = kernel(Cc.to(xs.dtype), k.to(xs.dtype), xs, **common)
        D = self.D.view(self.num_heads, self.head_dim) if self.D_has_hdim else self.D[:, None]
        y = rearrange(y.float() + xs.float() * D.float(), "... h p -> ... (h p)")
        y = self.norm(y, z) if self.norm is not None else y * F.silu(z.float())
        store_state(self, past_key_values, recurrent_state=recurrent_state, conv_state=conv_state, offset=T)
        return repad(self.out_proj(y.to(x.dtype)), indices, B, T), None, past_key_values
