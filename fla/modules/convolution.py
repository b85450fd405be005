"""The short causal depthwise convolution of linear-attention layers (``ShortConvolution``) with
FLA 0.6.0's arguments, parameters and cache layout: variable-length packed batches, a cached
conv state [N, D, W] (the last W inputs of each sequence, the newest last) and a one-token step."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules import causal_conv
from fla.modules.activations import ACT2FN

CONV_ACTIVATIONS = (None, "silu", "swish")


def _sequences(x, cu_seqlens):
    """(packed x [L, D], cu_seqlens [N + 1] int64 or None for B sequences of T tokens) of x
    [B, T, D] (B = 1 with cu_seqlens)."""
    B, T, D = x.shape
    if cu_seqlens is None:
        return x.reshape(B * T, D), None
    if B != 1:
        raise ValueError(f"with `cu_seqlens`, x must be packed into a batch of 1, got batch {B}")
    return x[0], cu_seqlens.to(x.device, torch.int64)


def _offsets(cu, B, T, device):
    """cu_seqlens [N + 1] int64, made for B sequences of T tokens where none was given."""
    return cu if cu is not None else torch.arange(B + 1, device=device) * T


def causal_conv1d(x, weight, bias=None, residual=None, initial_state=None, output_final_state=False,
                  activation=None, cu_seqlens=None):
    """y_t = act(sum_j weight[:, j] x_(t - W + 1 + j) + bias) (+ residual), per sequence: x [B, T, D]
    (or packed [1, L, D] with ``cu_seqlens`` [N + 1]); weight [D, W]; bias [D]; inputs before a
    sequence's start come from ``initial_state`` [N, D, W] (its newest W - 1 columns), or are 0.
    Returns (y [B, T, D], final state [N, D, W] or None)."""
    if activation not in CONV_ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {CONV_ACTIVATIONS}, got {activation!r}")
    B, T, D = x.shape
    W = weight.shape[-1]
    flat, cu = _sequences(x, cu_seqlens)
    N, L = (cu.numel() - 1 if cu is not None else B), flat.shape[0]
    if initial_state is not None and tuple(initial_state.shape) != (N, D, W):
        raise ValueError(f"the conv `cache` must be [N, D, W] = {[N, D, W]}, got {list(initial_state.shape)}")
    if causal_conv.usable(flat, initial_state):
        # a batch of equal lengths leaves its token bounds to the kernel (a grid axis per
        # sequence, at most 65535 of them); a packed one's are derived once per cu_seqlens
        bounds = (causal_conv.token_bounds(cu_seqlens, flat.shape[0], x.device) if cu_seqlens is not None else
                  causal_conv.token_bounds(_offsets(None, B, T, x.device), B * T, x.device, keep=False)
                  if B > 65535 else None)
        y = causal_conv.CausalConv.apply(flat, weight, bias, initial_state, bounds, T, activation).reshape(B, T, D)
        final = _final_state(flat, _offsets(cu, B, T, x.device), initial_state, W) if output_final_state else None
        return (y + residual if residual is not None else y), final
    cu = _offsets(cu, B, T, x.device)
    # each sequence behind its W prefix inputs (the cached ones, or zeros): one padded stream
    prefix = (initial_state.transpose(1, 2).to(flat.dtype) if initial_state is not None
              else flat.new_zeros(N, W, D))
    seq = torch.repeat_interleave(torch.arange(N, device=x.device), cu.diff(), output_size=L)
    pos = torch.arange(L, device=x.device) + (seq + 1) * W  # each token's place in the stream
    stream = flat.new_empty(L + N * W, D)
    stream[pos] = flat
    starts = cu[:-1] + torch.arange(N, device=x.device) * W  # each sequence's prefix
    stream[(starts[:, None] + torch.arange(W, device=x.device)).flatten()] = prefix.reshape(N * W, D)
    window = stream[pos[:, None] - W + 1 + torch.arange(W, device=x.device)]  # [L, W, D]
    y = torch.einsum("lwd,dw->ld", window.float(), weight.float())
    if bias is not None:
        y = y + bias.float()
    if activation is not None:
        y = F.silu(y)
    y = y.to(x.dtype).reshape(B, T, D)
    if residual is not None:
        y = y + residual
    final = None
    if output_final_state:
        ends = cu[1:] + (torch.arange(N, device=x.device) + 1) * W  # one past each sequence's last input
        final = stream[ends[:, None] - W + torch.arange(W, device=x.device)].transpose(1, 2).contiguous()
    return y, final


def _final_state(flat, cu, initial_state, W):
    """Each sequence's last W inputs [N, D, W] (the newest last), from flat [L, D] or, before a
    sequence's start, from its initial_state [N, D, W] (or 0)."""
    N, D = cu.numel() - 1, flat.shape[1]
    idx = cu[1:, None] - W + torch.arange(W, device=flat.device)  # [N, W] the inputs' places in flat
    inside = idx >= cu[:-1, None]
    final = flat[idx.clamp(0, flat.shape[0] - 1)]  # [N, W, D]
    if initial_state is not None:
        col = (W - cu[:-1, None] + idx).clamp(0, W - 1)  # the cached column of an input before the start
        cached = initial_state.gather(2, col[:, None, :].expand(N, D, W)).transpose(1, 2)
        final = torch.where(inside[..., None], final, cached.to(final.dtype))
    else:
        final = torch.where(inside[..., None], final, 0)
    return final.transpose(1, 2).contiguous()


class ShortConvolution(nn.Conv1d):
    """A depthwise causal conv of ``kernel_size`` taps over [B, T, hidden_size] inputs, with
    activation silu (or None). Parameters ``weight`` [hidden_size, 1, kernel_size] (and
    ``bias`` [hidden_size]), as ``nn.Conv1d``'s.

    forward(x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None)
    -> (y [B, T, D], cache [N, D, W] or None); ``mask`` [B, T] zeroes padded inputs (x is not
    modified); ``cache`` holds each sequence's last W inputs. Without autograd and with one
    token per sequence it takes the step (``step``), which updates ``cache`` in place.
    ``backend`` is accepted for FLA compatibility: CUDA inputs take the Triton kernels of
    causal_conv.py (the PyTorch formula when the cache itself wants a gradient), others the
    PyTorch formula."""

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False, activation: str | None = "silu",
                 backend: str | None = "triton", device=None, dtype=None, **kwargs):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, padding=kernel_size - 1,
                         bias=bias, device=device, dtype=dtype)
        if activation not in CONV_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {CONV_ACTIVATIONS}, got {activation!r}")
        self.hidden_size, self.activation, self.backend = hidden_size, activation, backend

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"

    def forward(self, x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None,
                chunk_indices=None, **kwargs):
        B, T, _ = x.shape
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        if mask is not None:
            if cu_seqlens is not None:
                raise ValueError("`mask` and `cu_seqlens` cannot both be given")
            x = x * mask[..., None].to(x.dtype)
        one_token = B * T == N and (cu_seqlens is None or bool((cu_seqlens.diff() == 1).all()))
        if not torch.is_grad_enabled() and one_token:
            return self.step(x, residual, cache, output_final_state, cu_seqlens)
        return causal_conv1d(x, self.weight[:, 0], self.bias, residual, cache, output_final_state, self.activation,
                             cu_seqlens)

    def step(self, x, residual, cache, output_final_state=False, cu_seqlens=None):
        """One token per sequence: x [N, 1, D] (or [1, N, D] packed, or [N, D]); ``cache``
        [N, D, W] is shifted and takes x in place (a new zero cache if None). Returns (y shaped
        like x, cache if ``output_final_state`` else None)."""
        shape = x.shape
        D, W = self.hidden_size, self.kernel_size[0]
        x2 = x.reshape(-1, D)
        if cache is None:
            cache = x2.new_zeros(x2.shape[0], D, W)
        if cache.shape != (x2.shape[0], D, W):
            raise ValueError(f"the conv `cache` must be [N, D, W] = {[x2.shape[0], D, W]}, got {list(cache.shape)}")
        cache.copy_(torch.cat([cache[..., 1:], x2[..., None].to(cache.dtype)], -1))
        y = (cache.float() * self.weight[:, 0].float()).sum(-1)
        if self.bias is not None:
            y = y + self.bias.float()
        if self.activation is not None:
            y = ACT2FN[self.activation](y)
        y = y.to(x.dtype).reshape(shape)
        if residual is not None:
            y = y + residual
        return y, (cache if output_final_state else None)
