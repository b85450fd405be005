"""KL divergence between a teacher's and a student's linear-layer logits without materialising
them (tokens in chunks, as fused_linear_cross_entropy): FLA 0.6.0's ``FusedKLDivLoss``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.fused_linear_cross_entropy import _chunk_rows

KL_REDUCTIONS = ("batchmean", "sum")


class _FusedKLDiv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target_x, weight, target_weight, reduction, accumulate_grad_in_fp32):
        N, H = x.shape
        V = weight.shape[0]
        scale = 1.0 / N if reduction == "batchmean" else 1.0
        gdtype = torch.float32 if accumulate_grad_in_fp32 else weight.dtype
        dx = torch.empty_like(x)
        dw = torch.zeros(V, H, dtype=gdtype, device=x.device)
        loss = x.new_zeros((), dtype=torch.float32)
        C = _chunk_rows(N, H, V, 8)
        for start in range(0, N, C):
            xc = x[start:start + C]
            logp = F.log_softmax(F.linear(xc, weight).float(), -1)
            logq = F.log_softmax(F.linear(target_x[start:start + C], target_weight).float(), -1)
            q = logq.exp()
            loss += (q * (logq - logp)).sum()
            dz = (logp.exp() - q) * scale  # d/dlogits of sum q (log q - log p)
            dx[start:start + C] = (dz @ weight.float()).to(x.dtype)
            dw += (dz.t() @ xc.float()).to(gdtype)
        ctx.save_for_backward(dx, dw)
        ctx.wdtype = weight.dtype
        return loss * scale

    @staticmethod
    def backward(ctx, dloss):
        dx, dw = ctx.saved_tensors
        g = dloss.float()
        return (dx.float() * g).to(dx.dtype), None, (dw.float() * g).to(ctx.wdtype), None, None, None


class FusedKLDivLoss(nn.Module):
    """forward(x [N, H], target_x [N, H], weight [V, H], target_weight [V, H]):
    KL(softmax(target_x target_weight^T) || softmax(x weight^T)), summed over the vocabulary and
    the tokens, divided by N (``reduction='batchmean'``) or not (``'sum'``); gradients for x and
    weight (the teacher is a constant). One chunk of rows' logits at a time."""

    def __init__(self, reduction: str = "batchmean", accumulate_grad_in_fp32: bool = True):
        super().__init__()
        if reduction not in KL_REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {KL_REDUCTIONS}, got {reduction!r}")
        self.reduction, self.accumulate_grad_in_fp32 = reduction, accumulate_grad_in_fp32

    def forward(self, x, target_x, weight, target_weight):
        if x.dim() != 2 or target_x.shape[0] != x.shape[0] or weight.shape[0] != target_weight.shape[0]:
            raise ValueError(f"expected x [N, H], target_x [N, H_t], weight [V, H], target_weight [V, H_t], got "
                             f"{tuple(x.shape)}, {tuple(target_x.shape)}, {tuple(weight.shape)}, "
                             f"{tuple(target_weight.shape)}")
        return _FusedKLDiv.apply(x, target_x, weight, target_weight, self.reduction, self.accumulate_grad_in_fp32)
