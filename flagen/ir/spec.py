"""The recurrence IR: a small, typed, immutable description of one linear recurrence.

Per state head, over a key-major matrix state ``S`` of shape ``[K, V]``::

    S_t = M_t S_{t-1} + write_t          o_t = readout(S)

with the transition ``M_t`` one of

    identity | exp(g_t) (scalar decay) | diag(exp(g_t)) (per-key decay)
    (I - beta_t k_t k_t^T) composed with either decay     (the delta rule)
    diag(exp(g_t)) + b_t a_t^T                             (diagonal plus low rank)

the write ``k_t v_t^T``, or with the delta rule ``beta_t k_t (v_t - (D_t S_{t-1})^T k_t)^T``,
and the readout either inclusive ``scale * S_t^T q_t`` or RWKV6's exclusive readout
``scale * (S_{t-1}^T q_t + (q_t . (u * k_t)) v_t)``.

Shapes (sequence-first, FLA's layout): ``q, k [B, T, H, K]``, ``v [B, T, HV, V]`` with ``HV``
a multiple of ``H`` (grouped value heads). Every other input belongs to a state head, so is
indexed by ``HV``; its :class:`Shape` says how it is laid out.

The log decay ``g`` and the delta strength ``beta`` are sympy expressions of the declared
raw inputs (and of :data:`head_index`), fused into the kernels; their derivatives are taken
by sympy. A spec that is inconsistent raises :class:`SpecError` naming the field at once.
"""

from __future__ import annotations

import dataclasses
import enum
import keyword
from dataclasses import dataclass, field

import sympy as sp

from flagen.ir.functions import SUPPORTED_FUNCTIONS


class SpecError(ValueError):
    """An inconsistent recurrence spec; the message names the offending field."""


class Shape(enum.Enum):
    """Layout of a raw input. ``B, T`` are batch and time, ``HV`` the state heads."""

    TOKEN = "token"          # [B, T, HV]      one scalar per token and head
    TOKEN_KEY = "token_key"  # [B, T, HV, K]   one vector over keys per token and head
    HEAD = "head"            # [HV]            a learned per-head parameter
    HEAD_KEY = "head_key"    # [HV, K]         a learned per-head, per-key parameter
    CONST = "const"          # a float given per call (not differentiated)

    @property
    def per_token(self) -> bool:
        return self in (Shape.TOKEN, Shape.TOKEN_KEY)

    @property
    def per_key(self) -> bool:
        return self in (Shape.TOKEN_KEY, Shape.HEAD_KEY)


class Decay(enum.Enum):
    NONE = "none"      # identity
    SCALAR = "scalar"  # S <- exp(g) S,        g one scalar per token and head
    KEY = "key"        # S <- diag(exp(g)) S,  g one value per key


class Readout(enum.Enum):
    INCLUSIVE = "inclusive"              # o_t = scale * S_t^T q_t
    EXCLUSIVE_BONUS = "exclusive_bonus"  # o_t = scale * (S_{t-1}^T q_t + (q_t . (u*k_t)) v_t)


# The head index a constant decay may depend on (RetNet: g = log(1 - 2^(-5-h))).
head_index = sp.Symbol("head_index", integer=True, nonnegative=True)

# Names the kernels use for their own arguments and locals; an input may not take them.
RESERVED_NAMES = frozenset({
    "q", "k", "v", "o", "h0", "ht", "dht", "dh0", "do", "scale", "cu_seqlens", "T", "NT", "N", "B", "H",
    "HV", "K", "V", "BK", "BV", "NV", "NC", "CKPT", "LOG2E", "state", "state_indices", "ckpt", "ckpt_offsets",
    "scratch", "bos", "eos", "head_index", "tl", "triton", "range", "_softplus", "_logsigmoid", "_tanh",
    # the kernels' own blocks (b_<name>)
    "gate", "decay", "kb", "r", "p", "sa", "dsa", "h", "hp", "dh", "dp", "dq", "dk", "dv", "dw", "dr",
    "dgate", "dbeta_t", "rq", "rk", "vdo", "dq", "part",
})


@dataclass(frozen=True)
class Input:
    """A raw input of a recurrence other than q, k and v."""

    name: str
    shape: Shape
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise SpecError(f"inputs: {self.name!r} is not a valid identifier")
        if self.name in RESERVED_NAMES or self.name.startswith(("b_", "p_", "o_", "m_", "i_", "c_", "t0", "t1", "grad_", "gate_", "beta_")):
            raise SpecError(
                f"inputs: the name {self.name!r} is reserved (kernel names and the prefixes "
                "b_, p_, o_, m_, i_, c_, grad_, gate_, beta_ are the kernels' own)"
            )
        if not isinstance(self.shape, Shape):
            raise SpecError(f"inputs: {self.name}.shape must be a flagen.ir.Shape, got {self.shape!r}")

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)


def symbols(*inputs: Input) -> tuple[sp.Symbol, ...]:
    """The sympy symbols of ``inputs``, for writing parametrisations."""
    return tuple(i.symbol for i in inputs)


@dataclass(frozen=True)
class Recurrence:
    """One linear recurrence; see the module docstring for the math and shapes."""

    name: str
    inputs: tuple[Input, ...] = ()
    decay: Decay = Decay.NONE
    gate: sp.Expr | None = None
    delta: bool = False
    beta: sp.Expr | None = None
    low_rank: bool = False
    readout: Readout = Readout.INCLUSIVE
    normalize: bool = False
    qk_l2norm: bool = False
    doc: str = field(default="", compare=False)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if self.gate is not None:
            object.__setattr__(self, "gate", sp.sympify(self.gate))
        if self.beta is not None:
            object.__setattr__(self, "beta", sp.sympify(self.beta))
        _validate(self)

    # --- derived facts the templates specialise on -------------------------------------
    def input(self, name: str) -> Input:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(name)

    def has_input(self, name: str) -> bool:
        return any(i.name == name for i in self.inputs)

    @property
    def beta_per_key(self) -> bool:
        return self.beta is not None and _mentions_key_shape(self, self.beta)

    @property
    def gate_per_token(self) -> bool:
        """False when the decay is a per-head constant (RetNet, g_gamma, lightning attention)."""
        return self.gate is not None and any(self.input(s.name).shape.per_token
                                             for s in _input_symbols(self.gate))

    @property
    def bonus(self) -> bool:
        return self.readout is Readout.EXCLUSIVE_BONUS

    def replace(self, **changes) -> "Recurrence":
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)

    def ir_text(self) -> str:
        """A canonical, deterministic text of the spec: what cache keys and headers use."""
        lines = [f"recurrence {self.name}"]
        for i in self.inputs:
            lines.append(f"  input {i.name}: {i.shape.value}")
        lines.append(f"  decay: {self.decay.value}")
        if self.gate is not None:
            lines.append(f"  gate: {sp.sstr(self.gate)}")
        lines.append(f"  delta: {self.delta}")
        if self.beta is not None:
            lines.append(f"  beta: {sp.sstr(self.beta)}")
        lines.append(f"  low_rank: {self.low_rank}")
        lines.append(f"  readout: {self.readout.value}")
        lines.append(f"  normalize: {self.normalize}")
        lines.append(f"  qk_l2norm: {self.qk_l2norm}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.ir_text()


# --- validation --------------------------------------------------------------------------

def _input_symbols(expr: sp.Expr) -> list[sp.Symbol]:
    return sorted((s for s in expr.free_symbols if s != head_index), key=lambda s: s.name)


def _mentions_key_shape(spec: Recurrence, expr: sp.Expr) -> bool:
    return any(spec.input(s.name).shape.per_key for s in _input_symbols(expr))


def _check_expression(spec: Recurrence, fieldname: str, expr: sp.Expr, structural: set[str]):
    if not isinstance(expr, sp.Expr):
        raise SpecError(f"{spec.name}.{fieldname}: expected a sympy expression, got {expr!r}")
    declared = {i.name for i in spec.inputs}
    for s in expr.free_symbols:
        if s == head_index:
            continue
        if not isinstance(s, sp.Symbol) or s.name not in declared:
            raise SpecError(f"{spec.name}.{fieldname}: unknown symbol {s} (declare it in inputs)")
        if s.name in structural:
            raise SpecError(f"{spec.name}.{fieldname}: {s} is used by the transition or readout and "
                            "cannot appear in a parametrisation")
    for f in expr.atoms(sp.Function):
        fname = type(f).__name__
        if fname not in SUPPORTED_FUNCTIONS:
            raise SpecError(f"{spec.name}.{fieldname}: unsupported function {fname} "
                            f"(supported: {', '.join(sorted(SUPPORTED_FUNCTIONS))})")
    for a in sp.preorder_traversal(expr):
        if isinstance(a, (sp.Piecewise, sp.Abs, sp.Min, sp.Max, sp.Derivative, sp.Integral)):
            raise SpecError(f"{spec.name}.{fieldname}: unsupported construct {type(a).__name__}")
        if a.is_Number and not a.is_real:
            raise SpecError(f"{spec.name}.{fieldname}: complex constant {a}")


def _require_input(spec: Recurrence, name: str, shape: Shape, why: str):
    if not spec.has_input(name):
        raise SpecError(f"{spec.name}.inputs: {why} needs an input {name!r} of shape {shape.value}")
    if spec.input(name).shape is not shape:
        raise SpecError(f"{spec.name}.inputs: {name!r} must have shape {shape.value} for {why}, "
                        f"not {spec.input(name).shape.value}")


def _validate(spec: Recurrence):
    if not isinstance(spec.name, str) or not spec.name.isidentifier():
        raise SpecError(f"name: {spec.name!r} is not a valid identifier")
    for fname, enum_type in (("decay", Decay), ("readout", Readout)):
        if not isinstance(getattr(spec, fname), enum_type):
            raise SpecError(f"{spec.name}.{fname}: expected a {enum_type.__name__}, got {getattr(spec, fname)!r}")
    for i in spec.inputs:
        if not isinstance(i, Input):
            raise SpecError(f"{spec.name}.inputs: expected flagen.ir.Input entries, got {i!r}")
    names = [i.name for i in spec.inputs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SpecError(f"{spec.name}.inputs: duplicate input names {sorted(dup)}")

    structural: set[str] = set()
    if spec.low_rank:
        if spec.delta:
            raise SpecError(f"{spec.name}.low_rank: the low-rank transition and the delta rule are exclusive "
                            "(DPLR with a = -beta*k, b = beta*k expresses the delta rule)")
        _require_input(spec, "a", Shape.TOKEN_KEY, "low_rank")
        _require_input(spec, "b", Shape.TOKEN_KEY, "low_rank")
        structural |= {"a", "b"}
    if spec.bonus:
        _require_input(spec, "u", Shape.HEAD_KEY, "the exclusive readout's bonus")
        structural.add("u")

    if spec.decay is Decay.NONE:
        if spec.gate is not None:
            raise SpecError(f"{spec.name}.gate: given, but decay is Decay.NONE")
    else:
        if spec.gate is None:
            raise SpecError(f"{spec.name}.gate: decay {spec.decay.value} needs a gate expression (the log decay)")
        _check_expression(spec, "gate", spec.gate, structural)
        if spec.decay is Decay.SCALAR and _mentions_key_shape(spec, spec.gate):
            raise SpecError(f"{spec.name}.gate: a scalar decay cannot depend on per-key inputs "
                            f"({', '.join(s.name for s in _input_symbols(spec.gate))}); use Decay.KEY")
        if spec.decay is Decay.KEY and not _mentions_key_shape(spec, spec.gate):
            raise SpecError(f"{spec.name}.gate: a per-key decay needs a gate that depends on a per-key input "
                            "(token_key or head_key); use Decay.SCALAR for a scalar gate")

    if spec.delta:
        if spec.beta is None:
            raise SpecError(f"{spec.name}.beta: the delta rule needs a beta expression")
        _check_expression(spec, "beta", spec.beta, structural)
        if head_index in spec.beta.free_symbols:
            raise SpecError(f"{spec.name}.beta: head_index is only meaningful in a gate")
    elif spec.beta is not None:
        raise SpecError(f"{spec.name}.beta: given, but delta is False")

    if spec.normalize and (spec.decay is not Decay.NONE or spec.delta or spec.low_rank or spec.bonus):
        raise SpecError(f"{spec.name}.normalize: the normaliser (sum of keys) is defined for plain linear "
                        "attention only (no decay, no delta rule, no low rank, inclusive readout)")

    used = set(structural)
    for expr in (spec.gate, spec.beta):
        if expr is not None:
            used |= {s.name for s in _input_symbols(expr)}
    unused = [n for n in names if n not in used]
    if unused:
        raise SpecError(f"{spec.name}.inputs: declared but unused: {unused}")
    for i in spec.inputs:
        if i.shape is Shape.CONST and i.name in structural:
            raise SpecError(f"{spec.name}.inputs: {i.name} cannot be a per-call constant")
