"""Elementwise functions that gate and beta parametrisations may use, beyond sympy's own.

Each is a sympy ``Function`` whose derivative (``fdiff``) is itself a sympy expression, so
``sympy.diff`` differentiates any parametrisation built from them; the codegen printer maps
each one to a numerically stable Triton helper.
"""

from __future__ import annotations

import sympy as sp


class sigmoid(sp.Function):
    """sigmoid(x) = 1 / (1 + exp(-x))."""

    nargs = 1

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sp.Function):
    """softplus(x) = log(1 + exp(x)), evaluated without overflow."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class logsigmoid(sp.Function):
    """logsigmoid(x) = log(sigmoid(x)) = -softplus(-x), evaluated without overflow."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])


# Functions a parametrisation may contain, by sympy class name; anything else is rejected
# when the spec is defined (the printer and the reference know exactly these).
SUPPORTED_FUNCTIONS = {
    "exp", "log", "tanh", "sigmoid", "softplus", "logsigmoid",
}
