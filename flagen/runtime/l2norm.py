"""The chunked ops' L2 normalisation of q and k (``use_qk_l2norm_in_kernel``) at run time: the
generated ``l2norm_fwd``/``l2norm_bwd`` kernels, one pass each way (the recurrent kernels
normalise in place). The result is fp32: the chunked kernels compute in fp32, and rounding
the normalised q, k back to bf16 would cost 2e-3 of the state (relative)."""

from __future__ import annotations

import torch

from flagen.runtime.intmath import cdiv, next_power_of_2


def _launch(x: torch.Tensor):
    K = x.shape[-1]
    BK = next_power_of_2(K)
    BR = max(1, 4096 // BK)
    NR = x.numel() // K
    return NR, (cdiv(NR, BR),), dict(K=K, BR=BR, BK=BK)


class _L2Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, x):
        x = x.contiguous()
        NR, grid, consts = _launch(x)
        y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        r = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
        if NR:
            module.KERNELS["l2norm_fwd"][grid](x, y, r, NR, **consts)
        ctx.save_for_backward(x, r)
        ctx.module = module
        return y

    @staticmethod
    def backward(ctx, dy):
        x, r = ctx.saved_tensors
        dy = dy.contiguous()
        NR, grid, consts = _launch(x)
        dx = torch.empty_like(x)
        if NR:
            ctx.module.KERNELS["l2norm_bwd"][grid](x, r, dy, dx, NR, **consts)
        return None, dx


def l2norm(module, x: torch.Tensor) -> torch.Tensor:
    """x [..., K] / sqrt(sum(x^2) + 1e-6) over K, fp32, differentiable in x. While
    torch.compile traces, the same in PyTorch ops."""
    if torch.compiler.is_compiling():
        x = x.float()
        return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)
    return _L2Norm.apply(module, x)
