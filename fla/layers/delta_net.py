"""DeltaNet (Schlag et al., 2021; Yang et al., 2024): the delta rule with beta = sigmoid(b_proj(x))
(x 2 with ``allow_neg_eigval``; 1 without ``use_beta``). FLA 0.6.0's ``DeltaNet``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import fla.ops.delta_rule as dr
from fla.layers.base import QKVLayer
from fla.modules.feature_map import elu_p1

MODES = ("chunk", "fused_recurrent")
QK_ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": elu_p1, "identity": lambda x: x}


class DeltaNet(QKVLayer):
    """DeltaNet with FLA's arguments and parameter names (``d_model`` an alias of
    ``hidden_size``): q and k through ``qk_activation`` (silu inside the short convolutions)
    and ``qk_norm`` ('l2' in the kernels, or 'sum': divided by the sum of magnitudes), v through silu, an output gate
    (``use_gate``) on the per-head norm. Inputs of at most 64 tokens run token by token, longer
    ones by ``mode``. States [N, H, dk, dv]."""

    def __init__(self, mode: str = "chunk", d_model: int = None, hidden_size: int = 1024, expand_k: float = 1.0,
                 expand_v: float = 1.0, num_heads: int = 4, use_beta: bool = True, use_gate: bool = False,
                 use_short_conv: bool = True, conv_size: int = 4, conv_bias: bool = False,
                 allow_neg_eigval: bool = False, layer_idx: int = None, qk_activation: str = "silu",
                 qk_norm: str = "l2", norm_eps: float = 1e-5, **kwargs):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"`qk_activation` must be one of {sorted(QK_ACTIVATIONS)}, got {qk_activation!r}")
        if qk_norm not in ("l2", "sum"):
            raise ValueError(f"`qk_norm` must be 'l2' or 'sum', got {qk_norm!r}")
        self.mode, self.qk_activation, self.qk_norm, self.layer_idx = mode, qk_activation, qk_norm, layer_idx
        self.use_beta, self.allow_neg_eigval = use_beta, allow_neg_eigval
        self._init_dims(hidden_size if d_model is None else d_model, expand_k, expand_v, num_heads, None)
        qk_act = "silu" if qk_activation == "silu" else None
        self._init_projections(dict(q=self.key_dim, k=self.key_dim, v=self.value_dim), use_short_conv, conv_size,
                               conv_bias, conv_activations=dict(q=qk_act, k=qk_act, v="silu"))
        if use_beta:
            self.b_proj = nn.Linear(self.hidden_size, num_heads, bias=False)
        self._init_o_norm_readout(use_gate, norm_eps)

    _readout = QKVLayer._o_norm_readout

    def _project(self, x, state, use_cache, cu_seqlens):
        (q, k, v), conv_state = super()._project(x, state, use_cache, cu_seqlens)
        if not self.use_short_conv:
            if self.qk_activation == "silu":
                q, k = F.silu(q), F.silu(k)
            v = F.silu(v)
        if self.qk_activation != "silu":
            q, k = QK_ACTIVATIONS[self.qk_activation](q), QK_ACTIVATIONS[self.qk_activation](k)
        return [q, k, v], conv_state

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v = self._heads(q, k, v)
        if self.qk_norm == "sum":
            q, k = (F.normalize(y.float(), p=1, dim=-1, eps=1e-6).to(y.dtype) for y in (q, k))
        beta = self.b_proj(x).float().sigmoid() if self.use_beta else q.new_ones(q.shape[:-1], dtype=torch.float32)
        if self.allow_neg_eigval:
            beta = beta * 2
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(beta=beta, initial_state=h0, output_final_state=use_cache,
                      use_qk_l2norm_in_kernel=self.qk_norm == "l2", cu_seqlens=cu_seqlens)
        if context["seq_len"] <= 64 or self.mode == "fused_recurrent":
            return dr.fused_recurrent_delta_rule(q, k, v, **common)
        return dr.chunk_delta_rule(q, k, v, **common)
