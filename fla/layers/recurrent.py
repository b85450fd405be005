"""Any recurrence (a built-in variant by name, or a user's ``flagen.ir.Recurrence``) as a
token-mixing layer: q/k/v projections (optional short convolutions), one projection or parameter
per input of the spec, the generated kernels, an output gate and norm, the generation cache."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from fla.layers.base import QKVLayer
from fla.modules.activations import ACT2FN
from flagen.ir import Recurrence, Shape
from flagen.runtime import compiled
from flagen.runtime.op import get_op

MODES = ("chunk", "fused_recurrent")
_OPS_BY_SPEC = {}  # id(spec) -> (spec, op); the spec is kept so that its id is not reused


class RecurrentLayer(QKVLayer):
    """The layer of recurrence ``spec`` (a Recurrence, or a built-in's name such as 'gla').

    Each input of the spec gets, by its shape: per token (``Shape.TOKEN``) a linear projection
    of the hidden state to one value per head, ``<name>`` in ``input_proj``; per token and key
    (``TOKEN_KEY``) one to ``head_k_dim`` values per head; per head (``HEAD``, ``HEAD_KEY``) a
    learned parameter in ``input_params``, initialised to ``head_init`` (default 0); per call
    (``CONST``) a value from ``constants``. The projections see the raw input: the spec's gate
    and beta expressions (sigmoid, softplus, ...) are computed in the kernels.

    ``mode='chunk'`` runs the chunked kernels for training and prefill (inputs of at most 64
    tokens go token by token), ``'fused_recurrent'`` always the token-by-token ones; a spec
    without chunked kernels needs the latter. forward as every fla layer:
    (hidden_states [B, T, hidden_size], attention_mask, past_key_values, use_cache) ->
    (o, None, past_key_values)."""

    def __init__(self, spec: Recurrence | str, hidden_size: int = 1024, num_heads: int = 4,
                 num_kv_heads: int | None = None, expand_k: float = 0.5, expand_v: float = 1.0, mode: str = "chunk",
                 use_short_conv: bool = False, conv_size: int = 4, conv_bias: bool = False,
                 use_output_gate: bool = True, gate_fn: str = "swish", elementwise_affine: bool = True,
                 norm_eps: float = 1e-5, fuse_norm: bool = True, constants: dict[str, float] | None = None,
                 head_init: dict[str, float] | None = None, layer_idx: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        self.spec = spec
        self.spec_name, self.mode, self.layer_idx = self.op.name, mode, layer_idx
        if mode == "chunk" and not self.op.module.CHUNKED:
            raise ValueError(f"{self.spec_name} has no chunked kernels: use mode='fused_recurrent'")
        self._init_dims(hidden_size, expand_k, expand_v, num_heads, num_kv_heads)
        self._init_qkv(use_short_conv, conv_size, conv_bias)
        self.input_proj, self.input_params = nn.ModuleDict(), nn.ParameterDict()
        self.constants = dict(constants or {})
        head_init = dict(head_init or {})
        H, K = num_heads, self.head_k_dim
        for name, kind in self.op.module.INPUTS:
            kind = Shape(kind)
            if kind is Shape.TOKEN:
                self.input_proj[name] = nn.Linear(hidden_size, H, bias=True)
            elif kind is Shape.TOKEN_KEY:
                self.input_proj[name] = nn.Linear(hidden_size, H * K, bias=True)
            elif kind in (Shape.HEAD, Shape.HEAD_KEY):
                shape = (H,) if kind is Shape.HEAD else (H, K)
                self.input_params[name] = nn.Parameter(torch.full(shape, float(head_init.get(name, 0.0))))
            elif name not in self.constants:
                raise ValueError(f"{self.spec_name} takes the per-call constant {name!r}: give it in `constants`")
        unknown = set(self.constants) - {n for n, kind in self.op.module.INPUTS if kind == "const"}
        if unknown:
            raise ValueError(f"`constants` names {sorted(unknown)}, not constants of {self.spec_name}")
        self._init_readout(use_output_gate, gate_fn, fuse_norm, elementwise_affine, norm_eps, ACT2FN)
        self._op_key = compiled.register(self.op)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._op_key = compiled.register(self.op)  # (a layer unpickled in another process)

    @property
    def op(self):
        """The spec's op (flagen.runtime.op.get_op: compiled once per process, then shared),
        looked up once per spec object: get_op keys a user's spec by its IR text (~10 us), too
        much for every decoding step."""
        entry = _OPS_BY_SPEC.get(id(self.spec))
        if entry is None or entry[0] is not self.spec:
            entry = _OPS_BY_SPEC[id(self.spec)] = (self.spec, get_op(self.spec))
        return entry[1]

    def extra_repr(self) -> str:
        return f"spec={self.spec_name}, mode={self.mode}"

    def _mix(self, x, q, k, v, state, use_cache, cu_seqlens, context):
        q, k, v = self._heads(q, k, v)
        inputs = dict(self.constants)
        for name, proj in self.input_proj.items():
            y = proj(x).float()
            inputs[name] = (y if Shape(self.op.inputs[name]) is Shape.TOKEN else
                            rearrange(y, "... (h d) -> ... h d", d=self.head_k_dim))
        inputs.update(self.input_params.items())
        h0 = state["recurrent_state"] if state is not None else None
        common = dict(initial_state=h0, output_final_state=use_cache, cu_seqlens=cu_seqlens, **inputs)
        mode = "chunk" if self.mode == "chunk" and context["seq_len"] > 64 else "recurrent"
        if torch.compiler.is_compiling():  # one custom op in the graph (flagen.runtime.compiled)
            return compiled.call(mode, self._op_key, q, k, v, **common)
        return self.op.chunk(q, k, v, **common) if mode == "chunk" else self.op(q, k, v, **common)
