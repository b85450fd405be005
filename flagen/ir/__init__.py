"""The recurrence IR: specs (`Recurrence`), their inputs, and the built-in library."""

from flagen.ir.functions import logsigmoid, sigmoid, softplus
from flagen.ir.spec import Decay, Input, Readout, Recurrence, Shape, SpecError, head_index, symbols

__all__ = [
    "Decay", "Input", "Readout", "Recurrence", "Shape", "SpecError", "head_index", "symbols",
    "sigmoid", "softplus", "logsigmoid",
]
