"""flagen.runtime.intmath: the host's cdiv and next_power_of_2 agree with Triton's."""

import triton

from flagen.runtime.intmath import cdiv, next_power_of_2


def test_intmath_agrees_with_triton():
    for n in range(0, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 64, 100):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
