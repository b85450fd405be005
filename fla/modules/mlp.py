"""The gated MLP (SwiGLU, or PowGLU with ``hidden_act='powlu'``) with FLA 0.6.0's arguments and
parameter names."""

from __future__ import annotations

import torch
import torch.nn as nn

from fla.modules.activations import powglu, powglu_linear, swiglu, swiglu_linear


class SwiGLULinear(nn.Module):
    """forward(x, y, weight, bias) = ``F.linear(swish(x) * y, weight, bias)`` (no parameters)."""

    def forward(self, x, y, weight, bias):
        return swiglu_linear(x, y, weight, bias)


class GatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)); act swish (``hidden_act='swish'``) or PowGLU's
    gate (``'powlu'``, exponent ``powglu_power``). ``intermediate_size`` defaults to
    2/3 hidden_ratio hidden_size (hidden_ratio 4) rounded up to a multiple of 256.
    x [..., hidden_size] -> [..., hidden_size]."""

    def __init__(self, hidden_size: int, hidden_ratio: int | None = None, intermediate_size: int | None = None,
                 hidden_act: str = "swish", fuse_swiglu: bool = True, powglu_power: float = 3.0):
        super().__init__()
        if hidden_act not in ("swish", "powlu"):
            raise ValueError(f"`hidden_act` must be 'swish' or 'powlu', got {hidden_act!r}")
        hidden_ratio = 4 if hidden_ratio is None else hidden_ratio
        if intermediate_size is None:
            intermediate_size = -(-int(hidden_size * hidden_ratio * 2 / 3) // 256) * 256
        self.hidden_size, self.hidden_ratio, self.intermediate_size = hidden_size, hidden_ratio, intermediate_size
        self.hidden_act, self.fuse_swiglu, self.powglu_power = hidden_act, fuse_swiglu, powglu_power
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        if fuse_swiglu and hidden_act == "swish":
            self.swiglu_linear = SwiGLULinear()

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        gate, y = self.gate_proj(x), self.up_proj(x)
        if self.hidden_act == "powlu":
            if self.fuse_swiglu:
                return powglu_linear(gate, y, self.down_proj.weight, self.down_proj.bias, self.powglu_power)
            return self.down_proj(powglu(gate, y, self.powglu_power))
        if self.fuse_swiglu:
            return self.swiglu_linear(gate, y, self.down_proj.weight, self.down_proj.bias)
        return self.down_proj(swiglu(gate, y))
