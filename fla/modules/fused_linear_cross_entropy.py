"""Cross-entropy of a linear layer's logits without materialising them: the tokens in chunks,
each chunk's logits [C, V] made, differentiated and dropped in the forward pass (their
gradients with respect to x, weight and bias accumulated there), so peak memory holds one
chunk's logits. FLA 0.6.0's ``FusedLinearCrossEntropyLoss``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.fused_cross_entropy import _check_options, check_targets, cross_entropy_rows
from flagen.runtime.intmath import cdiv, next_power_of_2


LOGITS_BLOCK = 1 << 27  # logits per chunk at the most: the chunk's temporaries (its logits, their fp32
# softmax and gradient) stay near 2 GB whatever N / num_chunks is (8 chunks of 16k tokens at a 150k
# vocabulary were 8.4 GB at the peak on the H200, FLA 3.1 GB)


def _chunk_rows(N, H, V, num_chunks):
    """Rows per chunk: about N / num_chunks (fewer chunks when V < num_chunks H), a power of 2,
    and no more than LOGITS_BLOCK / V (more chunks than asked for a large vocabulary)."""
    chunks = max(1, min(num_chunks, cdiv(V, H)))
    cap = 1 << max(4, (LOGITS_BLOCK // max(V, 1)).bit_length() - 1)  # a power of 2, at least 16 rows
    return min(next_power_of_2(cdiv(N, chunks)), cap)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, weight, bias, ignore_index, label_smoothing, logit_scale, logit_softcapping,
                num_chunks, reduction, use_l2warp, l2_penalty_factor, accumulate_grad_in_fp32, need_grad):
        N, H = x.shape
        V = weight.shape[0]
        valid = target != ignore_index
        total = valid.sum().clamp_min(1)
        grad_scale = 1.0 / total.float() if reduction == "mean" else torch.ones((), device=x.device)
        gdtype = torch.float32 if accumulate_grad_in_fp32 else weight.dtype
        # the gradients are made here, chunk by chunk, only when a backward can follow (need_grad)
        dx = torch.empty_like(x) if need_grad else None
        dw = torch.zeros(V, H, dtype=gdtype, device=x.device) if need_grad else None
        db = torch.zeros(V, dtype=gdtype, device=x.device) if bias is not None and need_grad else None
        loss = x.new_zeros((), dtype=torch.float32)
        C = _chunk_rows(N, H, V, num_chunks)
        for start in range(0, N, C):
            xc = x[start:start + C]
            logits = F.linear(xc, weight, bias)  # [C, V] in x's dtype, as the layer would give them
            c_loss, _, dz = cross_entropy_rows(logits, target[start:start + C], ignore_index, label_smoothing,
                                               logit_scale, logit_softcapping, 0.0, grad_scale if need_grad else None)
            loss += c_loss.sum()
            if not need_grad:
                continue
            if use_l2warp:
                # L2-Warp: a gradient-only pull of each row's largest logit towards 0, scaled by
                # the number of rows (the loss value is unchanged)
                top, ids = logits.float().max(-1, keepdim=True)
                dz.scatter_add_(-1, ids, top * (l2_penalty_factor / N))
            # the logits' gradient in x's dtype, as the logits themselves: the two products run
            # on the tensor cores (in fp32 they took 10x longer on the H200 than FLA's whole pass)
            dzc = dz.to(x.dtype)
            dx[start:start + C] = dzc @ weight
            dw += (dzc.t() @ xc).to(gdtype)
            if db is not None:
                db += dz.sum(0).to(gdtype)
        ctx.save_for_backward(dx, dw, db)
        ctx.dtypes = weight.dtype, bias.dtype if bias is not None else None
        return loss * grad_scale

    @staticmethod
    def backward(ctx, dloss):
        dx, dw, db = ctx.saved_tensors
        g = dloss.float()
        wdtype, bdtype = ctx.dtypes
        return ((dx.float() * g).to(dx.dtype), None, (dw.float() * g).to(wdtype),
                (db.float() * g).to(bdtype) if db is not None else None, *([None] * 10))


class FusedLinearCrossEntropyLoss(nn.Module):
    """forward(x [N, H], target [N], weight [V, H], bias [V] or None): the cross-entropy of
    ``x weight^T + bias`` (scaled, soft-capped, label-smoothed as FusedCrossEntropyLoss), mean
    over the targets that are not ``ignore_index`` or their sum, never holding more than one
    chunk of about N / ``num_chunks`` rows of logits. ``use_l2warp`` adds L2-Warp's gradient on
    each row's largest logit (``l2_penalty_factor``); ``accumulate_grad_in_fp32`` sums the
    weight's gradient over chunks in fp32."""

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, logit_scale: float = 1.0,
                 logit_softcapping: float | None = None, num_chunks: int = 8, reduction: str = "mean",
                 use_l2warp: bool = False, l2_penalty_factor: float = 1e-4, accumulate_grad_in_fp32: bool = True,
                 process_group=None):
        super().__init__()
        _check_options(reduction, process_group, ("mean", "sum"))
        if num_chunks < 1:
            raise ValueError(f"`num_chunks` must be positive, got {num_chunks}")
        self.ignore_index, self.label_smoothing, self.logit_scale = ignore_index, label_smoothing, logit_scale
        self.logit_softcapping, self.num_chunks, self.reduction = logit_softcapping, num_chunks, reduction
        self.use_l2warp, self.l2_penalty_factor = use_l2warp, l2_penalty_factor
        self.accumulate_grad_in_fp32, self.process_group = accumulate_grad_in_fp32, process_group

    def forward(self, x, target, weight, bias=None):
        if x.dim() != 2 or target.shape != x.shape[:1] or weight.dim() != 2 or weight.shape[1] != x.shape[1]:
            raise ValueError(f"expected x [N, H], target [N], weight [V, H], got {tuple(x.shape)}, "
                             f"{tuple(target.shape)}, {tuple(weight.shape)}")
        check_targets(target, weight.shape[0], self.ignore_index)
        return _FusedLinearCrossEntropy.apply(
            x, target, weight, bias, self.ignore_index, self.label_smoothing, self.logit_scale,
            self.logit_softcapping, self.num_chunks, self.reduction, self.use_l2warp, self.l2_penalty_factor,
            self.accumulate_grad_in_fp32,
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
