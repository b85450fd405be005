"""Mamba2's gated RMSNorm: rmsnorm over groups of channels, before or after a swish gate z.
FLA 0.6.0's ``RMSNormGated`` (fla.modules.layernorm_gated)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.layernorm import _normalize
from fla.modules.row_norm import check_args, row_norm, usable


def rmsnorm_gated(x, weight, z=None, eps=1e-5, group_size=None, norm_before_gate=False):
    """``rmsnorm(x) * swish(z)`` (``norm_before_gate``) or ``rmsnorm(x * swish(z))``, the norm over
    groups of ``group_size`` channels (all of them by default); x, z [..., D]; weight [D]."""
    D = x.shape[-1]
    groups = 1 if group_size is None else D // group_size
    if group_size is not None and D % group_size:
        raise ValueError(f"`group_size` ({group_size}) must divide the hidden size ({D})")
    check_args(x, weight, z=z)
    if usable(x, groups):
        return row_norm(x, weight, None, eps, True, groups, z, "swish" if z is not None else None,
                        z is not None and not norm_before_gate)
    s = x.float()
    if z is not None and not norm_before_gate:
        s = s * F.silu(z.float())
    y = _normalize(s, weight, None, eps, True, groups)
    if z is not None and norm_before_gate:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


class RMSNormGated(nn.Module):
    """rmsnorm_gated as a module; ``weight`` [hidden_size] (ones)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, z=None):
        return rmsnorm_gated(x, self.weight, z, self.eps, self.group_size, self.norm_before_gate)
