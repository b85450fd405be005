"""HGRN2 (Qin et al., 2024): gated linear attention whose keys are the forget gate's complement,
k = 1 - f with log f = logsigmoid(f_proj(x)) (floored by a per-layer ``lower_bound``), and
q = swish(q_proj(x)). FLA 0.6.0's ``HGRN2Attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from fla.layers.base import QKVLayer
from fla.modules import RMSNorm
from fla.modules.layernorm import rms_norm
from fla.ops.gla import chunk_gla, fused_recurrent_gla

MODES = ("chunk", "fused_recurrent", "fused_chunk")


class HGRN2Attention(QKVLayer):
    """HGRN2 with FLA's arguments and parameter names: ``num_heads`` heads of ``expand_ratio``
    forget/key channels each (one of the two given; ``expand_ratio`` wins), the input (value)
    split over the same heads, no output gate, an RMSNorm over the whole output before o_proj.
    forward takes FLA's ``lower_bound`` (the layer's floor of the forget gate, in [0, 1); none
    for layer 0). States [N, H, dv, dk] (V first, as FLA's layer)."""

    def __init__(self, mode: str = "chunk", hidden_size: int = 1024, num_heads: int | None = None,
                 expand_ratio: int | None = 128, use_short_conv: bool = False, conv_size: int = 4,
                 conv_bias: bool = False, elementwise_affine: bool | None = True, norm_eps: float = 1e-5,
                 layer_idx: int = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if expand_ratio is not None:
            num_heads = hidden_size // expand_ratio
        elif num_heads is not None:
            expand_ratio = hidden_size // num_heads
        else:
            raise ValueError("give `expand_ratio` or `num_heads`")
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"the heads ({num_heads}) must divide `hidden_size` ({hidden_size})")
        self.mode, self.hidden_size, self.num_heads, self.expand_ratio = mode, hidden_size, num_heads, expand_ratio
        self.forget_dim, self.input_dim, self.layer_idx = num_heads * expand_ratio, hidden_size, layer_idx
        self.head_f_dim, self.head_i_dim = expand_ratio, hidden_size // num_heads
        self._init_projections(dict(q=self.forget_dim, f=self.forget_dim, i=self.input_dim), use_short_conv,
                               conv_size, conv_bias, conv_activation=None)
        self.g_norm = RMSNorm(hidden_size, elementwise_affine, eps=norm_eps, dtype=torch.float32)
        self.o_proj = torch.nn.Linear(self.input_dim, hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, lower_bound=None, **kwargs):
        return super().forward(hidden_states, attention_mask, past_key_values, use_cache, output_attentions,
                               lower_bound=lower_bound, **kwargs)

    def _mix(self, x, q, f, i, state, use_cache, cu_seqlens, context):
        q, g = F.silu(q.float()), F.logsigmoid(f.float())
        lower_bound = context["kwargs"].get("lower_bound")
        if lower_bound is not None and self.layer_idx:
            g = torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g)  # log(lb + (1 - lb) f)
        k = -torch.expm1(g)  # 1 - f
        q, k, g = (rearrange(t, "... (h d) -> ... h d", d=self.head_f_dim) for t in (q.to(i.dtype), k.to(i.dtype), g))
        i = rearrange(i, "... (h d) -> ... h d", d=self.head_i_dim)
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(initial_state=h0, output_final_state=use_cache, state_v_first=True, cu_seqlens=cu_seqlens)
        if context["seq_len"] <= 64 or self.mode == "fused_recurrent":
            return fused_recurrent_gla(q, k, i, gk=g, **common)
        return chunk_gla(q, k, i, g=g, **common)

    def _readout(self, o, x):
        # FLA 0.6.0 normalises with rms_norm_linear's default eps, 1e-5, not g_norm.eps (norm_eps):
        # what its checkpoints were trained with
        o = rms_norm(rearrange(o, "... h d -> ... (h d)"), self.g_norm.weight, self.g_norm.bias, eps=1e-5)
        return self.o_proj(o.to(x.dtype))
