"""Cross-entropy on logits with FLA 0.6.0's options (logit scale, soft-capping, label
smoothing, z-loss, ignore_index): ``FusedCrossEntropyLoss`` and the per-row core that
fused_linear_cross_entropy shares."""

from __future__ import annotations

import torch
import torch.nn as nn

REDUCTIONS = ("mean", "sum", "none")


def _check_options(reduction, process_group, reductions=REDUCTIONS):
    if reduction not in reductions:
        raise ValueError(f"`reduction` must be one of {reductions}, got {reduction!r}")
    if process_group is not None:
        raise NotImplementedError("`process_group` (a vocabulary split over devices) is not supported")


def cross_entropy_rows(logits, target, ignore_index=-100, label_smoothing=0.0, logit_scale=1.0,
                       logit_softcapping=None, lse_square_scale=0.0, grad_scale=None, z_grad_scale=None):
    """Per-row losses of logits [C, V] (any float dtype; computed in fp32) against target [C]:
    ``lse - (1 - eps) z_y - eps mean(z) + lse_square_scale lse^2`` with z the scaled (and
    soft-capped: cap tanh(z / cap)) logits, 0 on ignored rows. Returns (loss [C] fp32, z-loss
    [C] fp32, and with ``grad_scale`` (a scalar or [C]) the gradient of sum(grad_scale * loss
    + z_grad_scale * z_loss) with respect to the logits [C, V] fp32, else None)."""
    z = logits.float() * logit_scale
    if logit_softcapping is not None:
        t = torch.tanh(z / logit_softcapping)
        z = logit_softcapping * t
    C, V = z.shape
    valid = target != ignore_index
    y = torch.where(valid, target, 0).long()
    lse = torch.logsumexp(z, -1)
    zy = z.gather(-1, y[:, None])[:, 0]
    loss = lse - (1 - label_smoothing) * zy - label_smoothing * z.mean(-1)
    z_loss = lse_square_scale * lse.square()
    loss = torch.where(valid, loss + z_loss, 0.0)
    z_loss = torch.where(valid, z_loss, 0.0)
    if grad_scale is None:
        return loss, z_loss, None
    gs = torch.as_tensor(grad_scale, dtype=torch.float32, device=z.device).expand(C) * valid
    coef = gs * (1 + 2 * lse_square_scale * lse)  # softmax's share: the loss's and the z-loss's
    if z_grad_scale is not None:
        coef = coef + torch.as_tensor(z_grad_scale, dtype=torch.float32, device=z.device).expand(C) * valid * (
            2 * lse_square_scale * lse)
    dz = torch.softmax(z, -1) * coef[:, None] - (gs * (label_smoothing / V))[:, None]
    dz.scatter_add_(-1, y[:, None], -(gs * (1 - label_smoothing))[:, None])
    if logit_softcapping is not None:
        dz = dz * (1 - t.square())
    return loss, z_loss, dz * logit_scale


ROW_BLOCK = 1 << 26  # logits per block of rows: a few fp32 temporaries of 256 MB at the most


class _CrossEntropy(torch.autograd.Function):
    """Per-row losses and z-losses of logits [N, V]; the backward recomputes each block of rows'
    softmax from the saved logits (only they are kept, in their own dtype: no fp32 copy of the
    logits lives past the forward) and returns the gradient in the logits' dtype."""

    @staticmethod
    def forward(ctx, logits, target, options):
        N, V = logits.shape
        R = max(1, ROW_BLOCK // max(V, 1))
        loss = logits.new_empty(N, dtype=torch.float32)
        z_loss = logits.new_empty(N, dtype=torch.float32)
        for s in range(0, N, R):
            loss[s:s + R], z_loss[s:s + R], _ = cross_entropy_rows(logits[s:s + R], target[s:s + R], **options)
        ctx.save_for_backward(logits, target)
        ctx.options = options
        return loss, z_loss

    @staticmethod
    def backward(ctx, dloss, dz_loss):
        logits, target = ctx.saved_tensors
        N, V = logits.shape
        R = max(1, ROW_BLOCK // max(V, 1))
        dlogits = torch.empty_like(logits)
        for s in range(0, N, R):
            _, _, dz = cross_entropy_rows(
                logits[s:s + R], target[s:s + R], **ctx.options,
                grad_scale=dloss[s:s + R] if dloss is not None else torch.zeros(()),
                z_grad_scale=dz_loss[s:s + R] if dz_loss is not None else None)
            dlogits[s:s + R] = dz
        return dlogits, None, None


def check_targets(target, V, ignore_index):
    """A class outside [0, V) would index past the logits: refuse it (one host sync; while
    torch.compile traces, an asynchronous device-side assert instead)."""
    bad = ((target != ignore_index) & ((target < 0) | (target >= V))).any()
    if torch.compiler.is_compiling():
        torch._assert_async(~bad, f"`target` holds a class outside [0, {V}) that is not ignore_index")
        return
    if bool(bad):
        raise ValueError(f"`target` holds a class outside [0, {V}) that is not ignore_index ({ignore_index})")


def _reduce(loss, valid, reduction):
    if reduction == "none":
        return loss
    return loss.sum() / (valid.sum().clamp_min(1) if reduction == "mean" else 1)


class FusedCrossEntropyLoss(nn.Module):
    """Cross-entropy of input [N, V] (logits) against target [N], mean over the targets that
    are not ``ignore_index`` (``reduction='mean'``), their sum, or per row (``'none'``). With
    ``lse_square_scale`` the z-loss ``lse_square_scale * lse^2`` is part of the loss, and with
    ``return_z_loss`` also returned apart: (loss, z_loss)."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 logit_scale: float = 1.0, lse_square_scale: float = 0.0, logit_softcapping: float | None = None,
                 inplace_backward: bool = False, process_group=None, return_z_loss: bool = False):
        super().__init__()
        _check_options(reduction, process_group)
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.logit_scale, self.lse_square_scale, self.logit_softcapping = logit_scale, lse_square_scale, \
            logit_softcapping
        self.inplace_backward, self.process_group, self.return_z_loss = inplace_backward, process_group, \
            return_z_loss

    def forward(self, input, target):
        if input.dim() != 2 or target.shape != input.shape[:1]:
            raise ValueError(f"expected input [N, V] and target [N], got {tuple(input.shape)} and "
                             f"{tuple(target.shape)}")
        check_targets(target, input.shape[1], self.ignore_index)
        loss, z_loss = _CrossEntropy.apply(input, target, dict(
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, logit_scale=self.logit_scale,
            logit_softcapping=self.logit_softcapping, lse_square_scale=self.lse_square_scale))
        valid = target != self.ignore_index
        loss = _reduce(loss, valid, self.reduction)
        return (loss, _reduce(z_loss, valid, self.reduction)) if self.return_z_loss else loss
