"""RMSNorm, LayerNorm and GroupNorm (and their forms fused with the next linear layer), with
FLA 0.6.0's names, arguments and parameters. Computed in fp32, returned in the input's dtype:
on CUDA tensors by the Triton kernels of row_norm.py, elsewhere by the PyTorch formulas here.

Every norm takes an optional ``residual`` added to ``x`` first; with ``prenorm=True`` it also
returns that sum (the next block's residual), in fp32 with ``residual_in_fp32``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.row_norm import check_args, row_norm, usable


def _add_residual(x, residual, residual_in_fp32):
    """(x + residual in fp32, the residual stream to hand on)."""
    s = x.float() if residual is None else x.float() + residual.float()
    return s, (s if residual_in_fp32 else s.to(x.dtype))


def _normalize(s, weight, bias, eps, is_rms_norm, num_groups=1):
    """The norm of fp32 ``s`` [..., D] over groups of D / num_groups channels, then the affine."""
    shape = s.shape
    s = s.reshape(*shape[:-1], num_groups, shape[-1] // num_groups)
    if not is_rms_norm:
        s = s - s.mean(-1, keepdim=True)
    y = (s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps)).reshape(shape)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y


def _check_groups(hidden_size, num_groups):
    if num_groups < 1 or hidden_size % num_groups:
        raise ValueError(f"`num_groups` ({num_groups}) must divide `hidden_size` ({hidden_size})")


def layer_norm(x, weight, bias, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False, is_rms_norm=False):
    """LayerNorm (RMSNorm with ``is_rms_norm``) over the last dim of x [..., D]; weight, bias [D]
    or None. Returns y [..., D] in x's dtype, and with ``prenorm`` also x + residual."""
    return group_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm, 1)


def rms_norm(x, weight, bias, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    """RMSNorm over the last dim of x [..., D] (see layer_norm)."""
    return group_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, True, 1)


def group_norm(x, weight, bias, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False, is_rms_norm=False,
               num_groups=1):
    """The norm over each of ``num_groups`` equal groups of x's last dim (see layer_norm)."""
    _check_groups(x.shape[-1], num_groups)
    check_args(x, weight, bias, residual=residual)
    if usable(x, num_groups):
        return row_norm(x, weight, bias, eps, is_rms_norm, num_groups, residual=residual, prenorm=prenorm,
                        residual_in_fp32=residual_in_fp32)
    s, res = _add_residual(x, residual, residual_in_fp32)
    y = _normalize(s, weight, bias, eps, is_rms_norm, num_groups).to(x.dtype)
    return (y, res) if prenorm else y


def layer_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-5, prenorm=False,
                      residual_in_fp32=False, is_rms_norm=False, num_groups=1):
    """group_norm then ``F.linear(y, linear_weight, linear_bias)``."""
    y = group_norm(x, norm_weight, norm_bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm, num_groups)
    y, res = y if prenorm else (y, None)
    out = F.linear(y, linear_weight.to(y.dtype), linear_bias.to(y.dtype) if linear_bias is not None else None)
    return (out, res) if prenorm else out


def rms_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-5, prenorm=False,
                    residual_in_fp32=False):
    """rms_norm then ``F.linear``."""
    return layer_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm,
                             residual_in_fp32, True, 1)


class GroupNorm(nn.Module):
    """The norm (RMS with ``is_rms_norm``) over ``num_groups`` groups of the last dim;
    ``weight`` [hidden_size] (with ``elementwise_affine``), ``bias`` [hidden_size] (with
    ``bias``). forward(x [..., hidden_size], residual=None, prenorm=False,
    residual_in_fp32=False)."""

    def __init__(self, num_groups: int, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 eps: float = 1e-5, is_rms_norm: bool = False, device=None, dtype=None):
        super().__init__()
        _check_groups(hidden_size, num_groups)
        self.num_groups, self.hidden_size = num_groups, hidden_size
        self.elementwise_affine, self.eps, self.is_rms_norm = elementwise_affine, eps, is_rms_norm
        factory = dict(device=device, dtype=dtype)
        self.register_parameter("weight", nn.Parameter(torch.ones(hidden_size, **factory))
                                if elementwise_affine else None)
        self.register_parameter("bias", nn.Parameter(torch.zeros(hidden_size, **factory))
                                if elementwise_affine and bias else None)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.hidden_size}, eps={self.eps}, is_rms_norm={self.is_rms_norm}"

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return group_norm(x, self.weight, self.bias, residual, self.eps, prenorm, residual_in_fp32, self.is_rms_norm,
                          self.num_groups)


class LayerNorm(GroupNorm):
    """LayerNorm over the last dim (GroupNorm with one group)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(1, hidden_size, elementwise_affine, bias, eps, False, device, dtype)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class RMSNorm(GroupNorm):
    """RMSNorm over the last dim (GroupNorm with one group, no mean)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(1, hidden_size, elementwise_affine, bias, eps, True, device, dtype)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class _NormLinear:
    """forward(x, weight, bias, ...): the norm, then ``F.linear(y, weight, bias)`` (the linear
    layer's parameters are the caller's)."""

    def forward(self, x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False):
        return layer_norm_linear(x, self.weight, self.bias, weight, bias, residual, self.eps, prenorm,
                                 residual_in_fp32, self.is_rms_norm, self.num_groups)


class GroupNormLinear(_NormLinear, GroupNorm):
    """GroupNorm fused with the next linear layer."""


class LayerNormLinear(_NormLinear, LayerNorm):
    """LayerNorm fused with the next linear layer."""


class RMSNormLinear(_NormLinear, RMSNorm):
    """RMSNorm fused with the next linear layer."""
