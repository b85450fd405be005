"""Linear attention's normaliser at run time. The generated kernels divide every output by
d_t = scale q_t . z_t + eps (z_t the sum of keys up to t) and store d; the backward starts
from the generated ``normalizer_bwd`` kernel, launched here."""

from __future__ import annotations

import torch

from flagen.runtime.intmath import cdiv, next_power_of_2


def divisor_gradients(module, do: torch.Tensor, o: torch.Tensor, den: torch.Tensor, scale: float):
    """(do_n, w): the gradient of the undivided output, do / d, and w = -scale (do . o) / d,
    the gradient of every divisor times scale. do, o [B, T, HV, V]; den [B, T, HV] fp32."""
    do = do.contiguous()
    do_n = torch.empty_like(do)
    w = torch.empty_like(den)
    NR, V = den.numel(), do.shape[-1]
    BV = max(16, next_power_of_2(V))
    BR = max(16, 4096 // BV)
    if NR:
        module.KERNELS["normalizer_bwd"][(cdiv(NR, BR),)](do, o, den, do_n, w, scale, NR, V=V, BR=BR, BV=BV)
    return do_n, w
