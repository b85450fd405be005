"""L2 normalisation over the last dim, with FLA 0.6.0's names (``l2norm``, ``l2_norm``,
``L2Norm``)."""

from __future__ import annotations

import torch
import torch.nn as nn


def l2norm(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, in fp32; returned in ``output_dtype`` (x's
    dtype by default)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(output_dtype or x.dtype)


l2_norm = l2norm


class L2Norm(nn.Module):
    """``l2norm`` as a module."""

    def __init__(self, eps: float = 1e-6, output_dtype: torch.dtype | None = None):
        super().__init__()
        self.eps, self.output_dtype = eps, output_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm(x, self.eps, self.output_dtype)
