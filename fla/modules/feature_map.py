"""Feature maps of linear attention (applied per head to q and k, [..., head_dim] -> [..., d'])
with FLA 0.6.0's names and parameters."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def elu_p1(x):
    """elu(x) + 1 (positive)."""
    return (F.elu(x.float()) + 1).to(x.dtype)


class HedgehogFeatureMap(nn.Module):
    """softmax([2 W x, -2 W x]) (Hedgehog; d' = 2 head_dim), W initialised to the identity."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer = nn.Linear(head_dim, head_dim)
        nn.init.eye_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x):
        y = 2 * self.layer(x)
        return torch.cat([y, -y], -1).softmax(-1)


class T2RFeatureMap(nn.Module):
    """relu(W x) (T2R; d' = dot_dim, head_dim by default)."""

    def __init__(self, head_dim: int, dot_dim: int | None = None, bias: bool | None = False):
        super().__init__()
        self.head_dim, self.dot_dim, self.bias = head_dim, dot_dim or head_dim, bias
        self.layer = nn.Linear(head_dim, self.dot_dim, bias=bias)

    def forward(self, x):
        return self.layer(x).relu()


class DPFPFeatureMap(nn.Module):
    """DPFP (parameter-free; d' = 2 nu head_dim): r = [relu(x), relu(-x)], then r times each of its
    rolls by 1..nu, concatenated."""

    def __init__(self, head_dim: int, nu: int = 4):
        super().__init__()
        self.nu = nu

    def forward(self, x):
        r = torch.cat([x.relu(), (-x).relu()], -1)
        return torch.cat([r * r.roll(j, -1) for j in range(1, self.nu + 1)], -1)


class HadamardFeatureMap(nn.Module):
    """(W1 x + b1) * (W2 x + b2) (d' = head_dim)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer1, self.layer2 = nn.Linear(head_dim, head_dim), nn.Linear(head_dim, head_dim)

    def forward(self, x):
        return self.layer1(x) * self.layer2(x)
