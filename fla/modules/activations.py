"""Activations and gated linear units by FLA 0.6.0's names (``ACT2FN``, ``swiglu``,
``swiglu_linear``, ``powglu``, ``powglu_linear``), computed in fp32 and returned in the input's
dtype."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _fp32(fn):
    def wrapped(x, *args):
        return fn(x.float(), *args).to(x.dtype)
    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_fp32
def swish(x):
    """x sigmoid(x)."""
    return F.silu(x)


@_fp32
def sigmoid(x):
    return torch.sigmoid(x)


@_fp32
def logsigmoid(x):
    return F.logsigmoid(x)


@_fp32
def sqrelu(x):
    """relu(x)^2."""
    return F.relu(x).square()


@_fp32
def fast_gelu(x):
    """GELU with the tanh approximation."""
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def bias_gelu(y, bias):
    """GELU (tanh approximation) of y + bias."""
    return fast_gelu(y + bias)


def swiglu(x, y):
    """swish(x) * y, in fp32, returned in x's dtype."""
    return (F.silu(x.float()) * y.float()).to(x.dtype)


def swiglu_linear(x, y, weight, bias):
    """``F.linear(swiglu(x, y), weight, bias)``."""
    z = swiglu(x, y)
    return F.linear(z, weight.to(z.dtype), bias.to(z.dtype) if bias is not None else None)


def powglu(x, y, power=3.0):
    """g(x) * y with g(x) = x^(power / (sqrt(x) + 1)) sigmoid(x) for x > 0, swish(x) otherwise."""
    xf = x.float()
    xp = torch.where(xf > 0, xf, torch.ones_like(xf))  # only positive lanes reach log and sqrt
    g = torch.where(xf > 0, torch.exp(power / (xp.sqrt() + 1) * xp.log()), xf) * torch.sigmoid(xf)
    return (g * y.float()).to(x.dtype)


def powglu_linear(x, y, weight, bias, power=3.0):
    """``F.linear(powglu(x, y, power), weight, bias)``."""
    z = powglu(x, y, power)
    return F.linear(z, weight.to(z.dtype), bias.to(z.dtype) if bias is not None else None)


ACT2FN = {
    "relu": F.relu,
    "sigmoid": sigmoid,
    "logsigmoid": logsigmoid,
    "silu": swish,
    "swish": swish,
    "sqrelu": sqrelu,
    "gelu": fast_gelu,
    "bias_gelu": bias_gelu,
}
