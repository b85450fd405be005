"""``cdiv`` and ``next_power_of_2`` for the host side of a launch, as plain Python: Triton's
own are ``constexpr_function`` objects (also callable in kernels) that cost about 2 us a call
from Python, and an op computes a dozen grid and tile sizes on every call."""

from __future__ import annotations


def cdiv(x: int, y: int) -> int:
    """ceil(x / y) for integers."""
    return -(-x // y)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (0 for 0, as triton.next_power_of_2)."""
    n = int(n)
    return 1 << (n - 1).bit_length() if n > 0 else 0
