"""Norms followed by an output gate, ``norm(x) * act(g)`` (the readout of most linear-attention
layers), with FLA 0.6.0's names, arguments and parameters; and their forms fused with the next
linear layer. Computed in fp32, returned in x's dtype (on CUDA by row_norm.py's kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fla.modules.layernorm import GroupNorm, _add_residual, _normalize
from fla.modules.row_norm import check_args, row_norm, usable

GATE_ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


def layer_norm_gated(x, g, weight, bias, activation="swish", residual=None, eps=1e-5, prenorm=False,
                     residual_in_fp32=False, is_rms_norm=False):
    """norm(x + residual) * act(g) over the last dim: x, g [..., D]; weight, bias [D] or None.
    Returns y [..., D] in x's dtype, and with ``prenorm`` also x + residual."""
    if activation not in GATE_ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(GATE_ACTIVATIONS)}, got {activation!r}")
    if g.shape != x.shape:
        raise ValueError(f"`g` must have x's shape {tuple(x.shape)}, got {tuple(g.shape)}")
    check_args(x, weight, bias, residual=residual)
    if usable(x):
        return row_norm(x, weight, bias, eps, is_rms_norm, z=g, gate=activation, residual=residual, prenorm=prenorm,
                        residual_in_fp32=residual_in_fp32)
    s, res = _add_residual(x, residual, residual_in_fp32)
    y = (_normalize(s, weight, bias, eps, is_rms_norm) * GATE_ACTIVATIONS[activation](g.float())).to(x.dtype)
    return (y, res) if prenorm else y


def rms_norm_gated(x, g, weight, bias, activation="swish", residual=None, eps=1e-5, prenorm=False,
                   residual_in_fp32=False):
    """rmsnorm(x + residual) * act(g) (see layer_norm_gated)."""
    return layer_norm_gated(x, g, weight, bias, activation, residual, eps, prenorm, residual_in_fp32, True)


class _Gated(GroupNorm):
    activation = "swish"

    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        return layer_norm_gated(x, g, self.weight, self.bias, self.activation, residual, self.eps, prenorm,
                                residual_in_fp32, self.is_rms_norm)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, activation={self.activation}"


class _GatedLinear(_Gated):
    def forward(self, x, g, weight=None, bias=None, residual=None, prenorm=False, residual_in_fp32=False):
        y = super().forward(x, g, residual, prenorm, residual_in_fp32)
        y, res = y if prenorm else (y, None)
        out = F.linear(y, weight.to(y.dtype), bias.to(y.dtype) if bias is not None else None)
        return (out, res) if prenorm else out


class FusedRMSNormGated(_Gated):
    """rmsnorm(x) * act(g), act swish (silu) or sigmoid; ``weight`` [hidden_size]."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5,
                 activation: str = "swish", device=None, dtype=None):
        super().__init__(1, hidden_size, elementwise_affine, False, eps, True, device, dtype)
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(GATE_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation


class FusedRMSNormSwishGate(FusedRMSNormGated):
    """rmsnorm(x) * swish(g)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__(hidden_size, elementwise_affine, eps, "swish", device, dtype)


class FusedRMSNormSwishGateLinear(_GatedLinear, FusedRMSNormSwishGate):
    """rmsnorm(x) * swish(g), then ``F.linear(., weight, bias)``."""


class FusedLayerNormGated(_Gated):
    """layernorm(x) * act(g); ``weight`` (and with ``bias``, ``bias``) [hidden_size]."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 activation: str = "swish", eps: float = 1e-5, device=None, dtype=None):
        super().__init__(1, hidden_size, elementwise_affine, bias, eps, False, device, dtype)
        if activation not in GATE_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(GATE_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation


class FusedLayerNormSwishGate(FusedLayerNormGated):
    """layernorm(x) * swish(g)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(hidden_size, elementwise_affine, bias, "swish", eps, device, dtype)


class FusedLayerNormSwishGateLinear(_GatedLinear, FusedLayerNormSwishGate):
    """layernorm(x) * swish(g), then ``F.linear(., weight, bias)``."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__(hidden_size, elementwise_affine, False, eps, device, dtype)
