"""The gradients of a variant's raw inputs (gates, betas, their parameters) from the partial
gradients its backward kernels write, shared by the recurrent and the chunked backward."""

from __future__ import annotations

import torch


def raw_gradients(op, raw: list[torch.Tensor], grads: dict[str, torch.Tensor],
                  reduce: dict[str, tuple[int, ...]]) -> list[torch.Tensor | None]:
    """One gradient (or None) per non-constant raw input of ``op``, in its shape and dtype.

    ``grads`` maps an input's name to its kernels' partial gradient; ``reduce`` gives, per input
    kind ("token", "token_key", "head", "head_key"), the dims of that partial gradient that are
    partial sums (over K or V tiles, sequences or chunks) to add up.
    """
    out, tensors = [], iter(raw)
    for name, kind in op.module.INPUTS:
        if kind == "const":
            continue
        x = next(tensors)
        g = grads.get(name)
        if g is not None and reduce[kind]:
            g = g.sum(reduce[kind])
        out.append(None if g is None else g.view(x.shape).to(x.dtype))
    return out
