"""The ops under ``torch.compile``: one ``torch.library`` custom op for a whole op call and one
for its backward, so that a model compiles with ``fullgraph=True`` (the calls are leaves of the
graph; their shape functions say what they return).

Eager calls do not come here (``fla.ops`` calls the op directly). ``flagen::run`` does what the
eager call does (its checks included); ``flagen::run_backward`` recomputes the forward with
autograd and differentiates it, so a compiled training step runs each op's forward twice (the
eager path keeps what the backward needs instead). ``cu_seqlens`` must be given as a tensor;
its values are checked when the op runs, not while tracing.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from flagen.runtime import checks

MODES = ("recurrent", "chunk")


def _inputs(names: str, tensors, const_names: str, consts) -> dict:
    """The op's inputs from the custom op's arguments (names comma-separated: the schema has no
    list of strings)."""
    split = lambda s: s.split(",") if s else []  # noqa: E731
    return dict(zip(split(names), tensors), **dict(zip(split(const_names), consts)))


# ops that are not built-ins (a user's spec), by the key the custom op's string argument carries
_REGISTERED: dict = {}


def register(op) -> str:
    """A key for ``op`` (a RecurrentOp) that ``call`` takes in place of a built-in's name; made
    before tracing (a layer does it when built)."""
    key = f"user:{op.module.__name__}"
    _REGISTERED[key] = op
    return key


def _op(variant: str):
    from flagen.runtime.op import get_op
    return _REGISTERED[variant] if variant in _REGISTERED else get_op(variant)


def _call(mode: str, variant: str, q, k, v, names, tensors, const_names, consts, h0, z0, scale, output_final_state,
          cu_seqlens, reverse, chunk_size):
    op = _op(variant)
    inputs = _inputs(names, tensors, const_names, consts)
    initial_state = (h0, z0) if z0 is not None else h0
    options = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                   cu_seqlens=cu_seqlens, reverse=reverse)
    if mode == "chunk":
        return op.chunk(q, k, v, chunk_size=chunk_size or None, **options, **inputs)
    return op(q, k, v, **options, **inputs)


def _outputs(o, final_state, q):
    """(o, S, z) with empty tensors for what the call does not return (an op returns tensors),
    contiguous whatever the inputs' strides (what the shape function says)."""
    empty = q.new_empty(0, dtype=torch.float32)
    if final_state is None:
        S, z = empty, empty.clone()
    elif isinstance(final_state, tuple):
        S, z = final_state
    else:
        S, z = final_state, empty
    return o.contiguous(), S.contiguous(), z.contiguous()


@torch.library.custom_op("flagen::run", mutates_args=())
def run(mode: str, variant: str, q: Tensor, k: Tensor, v: Tensor, names: str, tensors: list[Tensor],
        const_names: str, consts: list[float], h0: Optional[Tensor], z0: Optional[Tensor],
        scale: Optional[float], output_final_state: bool, cu_seqlens: Optional[Tensor], reverse: bool,
        chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        o, final_state = _call(mode, variant, q, k, v, names, tensors, const_names, consts, h0, z0, scale,
                               output_final_state, cu_seqlens, reverse, chunk_size)
    return _outputs(o, final_state, q)


@run.register_fake
def _(mode, variant, q, k, v, names, tensors, const_names, consts, h0, z0, scale, output_final_state, cu_seqlens,
      reverse, chunk_size):
    op = _op(variant)
    if cu_seqlens is not None:  # its values are checked when the op runs
        checks.tensor("cu_seqlens", cu_seqlens, ndim=1, device=q.device, dtypes=(torch.int32, torch.int64))
        if cu_seqlens.shape[0] < 2:
            raise ValueError("`cu_seqlens` must hold at least two offsets [0, ..., T]")
    op._check(q, k, v, _inputs(names, tensors, const_names, consts))
    N = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    HV, V, K = v.shape[2], v.shape[3], q.shape[3]
    o = v.new_empty(v.shape)  # contiguous, as the op's
    empty = q.new_empty(0, dtype=torch.float32)
    if not output_final_state:
        return o, empty, empty.clone()
    S = q.new_empty(N, HV, K, V, dtype=torch.float32)
    z = q.new_empty(N, HV, K, dtype=torch.float32) if op.module.NORMALIZE else empty
    return o, S, z


_AUTOGRAD_KEYS = ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView")


def _autograd_dispatch():
    """torch.library runs an op's implementation with autograd's dispatch keys excluded (its
    ops record no graph, whatever the grad mode): let them back in, the rest of the key sets
    (autocast's, say) as they are, for the backward that differentiates a recomputed forward."""
    excluded = torch._C._dispatch_tls_local_exclude_set()
    for key in _AUTOGRAD_KEYS:
        excluded = excluded.remove(getattr(torch._C.DispatchKey, key))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), excluded)


@torch.library.custom_op("flagen::run_backward", mutates_args=())
def run_backward(mode: str, variant: str, q: Tensor, k: Tensor, v: Tensor, names: str, tensors: list[Tensor],
                 const_names: str, consts: list[float], h0: Optional[Tensor], z0: Optional[Tensor],
                 scale: Optional[float], output_final_state: bool, cu_seqlens: Optional[Tensor], reverse: bool,
                 chunk_size: int, do: Tensor, dS: Tensor, dz: Tensor) -> list[Tensor]:
    """The gradients of q, k, v, h0 (empty without it), z0 (likewise) and every tensor input."""
    leaves = [x.detach().requires_grad_(True) if x is not None else None for x in (q, k, v, h0, z0, *tensors)]
    with _autograd_dispatch(), torch.enable_grad():
        q_, k_, v_, h0_, z0_, *tensors_ = leaves
        o, S, z = _outputs(*_call(mode, variant, q_, k_, v_, names, tensors_, const_names, consts, h0_, z0_, scale,
                                  output_final_state, cu_seqlens, reverse, chunk_size), q_)
        pairs = [(y, g) for y, g in ((o, do), (S, dS), (z, dz)) if y.numel() and g.numel()]
        used = [x for x in leaves if x is not None]
        grads = torch.autograd.grad([y for y, _ in pairs], used, [g for _, g in pairs], allow_unused=True)
    grads = iter(grads)
    out = []
    for x in leaves:
        g = next(grads) if x is not None else None
        out.append(x.new_zeros(x.shape) if x is not None and g is None else
                   g.contiguous() if g is not None else q.new_empty(0))
    return out


@run_backward.register_fake
def _(mode, variant, q, k, v, names, tensors, const_names, consts, h0, z0, scale, output_final_state, cu_seqlens,
      reverse, chunk_size, do, dS, dz):
    return [x.new_empty(x.shape) if x is not None else q.new_empty(0) for x in (q, k, v, h0, z0, *tensors)]


def _setup_context(ctx, inputs, output):
    ctx.args = inputs


def _backward(ctx, do, dS, dz):
    a = list(ctx.args)
    zero = a[2].new_empty(0, dtype=torch.float32)
    grads = run_backward(*a, do if do is not None else torch.zeros_like(a[4]),
                         dS if dS is not None else zero, dz if dz is not None else zero)
    dq, dk, dv, dh0, dz0, *dtensors = grads
    h0, z0 = a[9], a[10]
    # an empty list argument takes an empty list (torch.library's pytree), any other non-tensor None
    consts = [] if not a[8] else None
    return (None, None, dq, dk, dv, None, list(dtensors), None, consts, dh0 if h0 is not None else None,
            dz0 if z0 is not None else None, None, None, None, None, None)


run.register_autograd(_backward, setup_context=_setup_context)


def call(mode: str, variant: str, q, k, v, *, scale=None, initial_state=None, output_final_state=False,
         cu_seqlens=None, reverse=False, chunk_size=None, **inputs):
    """Built-in ``variant``'s op (or the op ``register`` gave that key) called as ``mode``
    ("recurrent" or "chunk"), through the custom op: what fla runs while ``torch.compile``
    traces. Returns (o, final_state) as the op does."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for n, x in inputs.items():
        if x is None:
            raise TypeError(f"{variant}: missing input `{n}`")
    names = [n for n, x in inputs.items() if isinstance(x, torch.Tensor)]
    const_names = [n for n, x in inputs.items() if not isinstance(x, torch.Tensor)]
    h0, z0 = initial_state if isinstance(initial_state, tuple) else (initial_state, None)
    o, S, z = run(mode, variant, q, k, v, ",".join(names), [inputs[n] for n in names], ",".join(const_names),
                  [float(inputs[n]) for n in const_names], h0, z0, None if scale is None else float(scale),
                  bool(output_final_state), cu_seqlens, bool(reverse), int(chunk_size or 0))
    if not output_final_state:
        return o, None
    return o, ((S, z) if z.dim() == 3 else S)
