"""sympy -> Triton expression printer.

``print_triton(expr, names)`` turns a parametrisation into one Triton expression, with each
symbol replaced by the kernel variable ``names[symbol.name]``. ``lower(exprs, names, prefix)``
does the same for several expressions at once after common-subexpression elimination, giving
assignments a template can emit line by line (the backward kernels print a gate and all its
sympy derivatives through it, so shared factors such as ``sigmoid(x)`` are computed once).

Exponentials are printed in log2 space (``exp2(x * log2(e))``), and softplus, logsigmoid and
tanh through the stable helpers in :data:`HELPERS`, which a generated module defines only if
one of its expressions uses them.
"""

from __future__ import annotations

import math

import sympy as sp

from flagen.ir.functions import logsigmoid, sigmoid, softplus

LOG2E = repr(1.0 / math.log(2.0))

# name -> Triton source of a helper; emitted into a generated module when an expression uses it.
HELPERS = {
    "_softplus": (
        "@triton.jit\n"
        "def _softplus(x):\n"
        "    # log(1 + exp(x)) without overflow for large |x|\n"
        "    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp2(-tl.abs(x) * LOG2E))\n"
    ),
    "_logsigmoid": (
        "@triton.jit\n"
        "def _logsigmoid(x):\n"
        "    # log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))\n"
        "    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp2(-tl.abs(x) * LOG2E))\n"
    ),
    "_tanh": (
        "@triton.jit\n"
        "def _tanh(x):\n"
        "    return 2.0 * tl.sigmoid(2.0 * x) - 1.0\n"
    ),
}


class PrintError(ValueError):
    pass


class _Printer:
    def __init__(self, names: dict[str, str]):
        self.names = names
        self.helpers: set[str] = set()

    def __call__(self, e: sp.Expr) -> str:
        if isinstance(e, sp.Symbol):
            if e.name not in self.names:
                raise PrintError(f"no kernel variable for symbol {e.name}")
            return self.names[e.name]
        if e.is_Number or e.is_NumberSymbol:
            if not e.is_real or not e.is_finite:
                raise PrintError(f"cannot print the constant {e}")
            return repr(float(e))
        if isinstance(e, sp.Add):
            terms = [self(a) for a in e.args]
            return "(" + " + ".join(terms) + ")"
        if isinstance(e, sp.Mul):
            coeff, rest = e.as_coeff_Mul()
            if coeff == -1:
                return "(-" + self(rest) + ")"
            factors = [self(a) for a in e.args]
            return "(" + " * ".join(factors) + ")"
        if isinstance(e, sp.Pow):
            return self._pow(*e.args)
        if isinstance(e, sp.exp):
            return f"tl.exp2({self(e.args[0])} * LOG2E)"
        if isinstance(e, sp.log):
            return f"tl.log({self(e.args[0])})"
        if isinstance(e, sigmoid):
            return f"tl.sigmoid({self(e.args[0])})"
        for fn, helper in ((softplus, "_softplus"), (logsigmoid, "_logsigmoid"), (sp.tanh, "_tanh")):
            if isinstance(e, fn):
                self.helpers.add(helper)
                return f"{helper}({self(e.args[0])})"
        raise PrintError(f"cannot print {type(e).__name__}: {e}")

    def _pow(self, base: sp.Expr, exp: sp.Expr) -> str:
        if exp.is_Integer:
            n = int(exp)
            if n == 0:
                return "1.0"
            x = self(base)
            pos = "(" + " * ".join([x] * abs(n)) + ")"
            return pos if n > 0 else f"(1.0 / {pos})"
        if exp == sp.Rational(1, 2):
            return f"tl.sqrt({self(base)})"
        if exp == sp.Rational(-1, 2):
            return f"(1.0 / tl.sqrt({self(base)}))"
        if base == 2:
            return f"tl.exp2({self(exp)})"
        # general power, defined for a positive base
        return f"tl.exp2(tl.log2({self(base)}) * {self(exp)})"


def print_triton(expr: sp.Expr, names: dict[str, str]) -> tuple[str, set[str]]:
    """One Triton expression for ``expr`` and the helpers it needs."""
    p = _Printer(names)
    return p(sp.sympify(expr)), p.helpers


def lower(exprs: list[sp.Expr], names: dict[str, str], prefix: str) -> tuple[list[tuple[str, str]], list[str], set[str]]:
    """CSE ``exprs`` and print them.

    Returns ``(assignments, results, helpers)``: ``assignments`` is a list of
    ``(variable, expression)`` to emit in order, ``results`` the expression text of each
    input expression (in terms of those variables).
    """
    tmp = sp.numbered_symbols(prefix=f"{prefix}_x")
    replacements, reduced = sp.cse([sp.sympify(e) for e in exprs], symbols=tmp, order="canonical")
    p = _Printer(dict(names))
    assignments = []
    for sym, value in replacements:
        assignments.append((sym.name, p(value)))
        p.names[sym.name] = sym.name
    results = [p(r) for r in reduced]
    return assignments, results, p.helpers


def derivatives(expr: sp.Expr, wrt: list[sp.Symbol]) -> list[sp.Expr]:
    """d expr / d s for each s in ``wrt``, taken by sympy."""
    return [sp.diff(expr, s) for s in wrt]
