"""A pure-PyTorch interpreter of any recurrence spec: the test oracle.

It runs the recurrence token by token exactly as written in the IR (no chunking, no tiling,
no log2 tricks), evaluating the gate and beta parametrisations with sympy's ``lambdify`` on
torch tensors, in whatever dtype it is given (tests use float64). Autograd through it gives
reference gradients.
"""

from __future__ import annotations

import sympy as sp
import torch
import torch.nn.functional as F

from flagen.ir.spec import Decay, Recurrence, Shape, head_index

_TORCH_FUNCS = {
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "logsigmoid": F.logsigmoid,
    "exp": torch.exp,
    "log": torch.log,
    "tanh": torch.tanh,
}


def _lambdify(spec: Recurrence, expr: sp.Expr):
    syms = [i.symbol for i in spec.inputs] + [head_index]
    return sp.lambdify(syms, expr, modules=[_TORCH_FUNCS, "math"])


def _expand(kind, x, dtype):
    """A raw input as a [T, HV, K]-broadcastable tensor for one sequence (or a float)."""
    if kind is Shape.CONST:
        return float(x)
    x = x.to(dtype)
    if kind is Shape.TOKEN:
        return x[..., None]          # [T, HV, 1]
    if kind is Shape.TOKEN_KEY:
        return x                     # [T, HV, K]
    if kind is Shape.HEAD:
        return x[None, :, None]      # [1, HV, 1]
    return x[None]                   # [1, HV, K]


def run(spec: Recurrence, q, k, v, scale=None, initial_state=None, output_final_state=False,
        cu_seqlens=None, dtype=torch.float64, **inputs):
    """Reference ``(o, final_state)`` for ``spec``, with FLA's shapes (see flagen.ir.spec).

    Computes in ``dtype``; ``o`` is returned in ``dtype`` too. With the normaliser the state is
    a pair ``(S, z)``.
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    scale = K ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        c = cu_seqlens.tolist()
        bounds = [(0, c[i], c[i + 1]) for i in range(len(c) - 1)]
    z0 = None
    if isinstance(initial_state, tuple):
        initial_state, z0 = initial_state
    gate_fn = _lambdify(spec, spec.gate) if spec.gate is not None else None
    beta_fn = _lambdify(spec, spec.beta) if spec.beta is not None else None
    heads = torch.arange(HV, device=q.device, dtype=dtype)[None, :, None]

    outs = torch.zeros(B, T, HV, V, dtype=dtype, device=q.device)
    finals, zfinals = [], []
    for n, (b, start, end) in enumerate(bounds):
        S = torch.zeros(HV, K, V, dtype=dtype, device=q.device)
        if initial_state is not None:
            S = initial_state[n].to(dtype)
        z = torch.zeros(HV, K, dtype=dtype, device=q.device) if z0 is None else z0[n].to(dtype)
        sl = slice(start, end)
        qs = q[b, sl].to(dtype).repeat_interleave(G, dim=1)  # [T, HV, K]
        ks = k[b, sl].to(dtype).repeat_interleave(G, dim=1)
        vs = v[b, sl].to(dtype)
        if spec.qk_l2norm:
            qs = qs / torch.sqrt((qs * qs).sum(-1, keepdim=True) + 1e-6)
            ks = ks / torch.sqrt((ks * ks).sum(-1, keepdim=True) + 1e-6)
        args = []
        for i in spec.inputs:
            x = inputs[i.name]
            if i.shape.per_token:
                x = x[b, sl]
            args.append(_expand(i.shape, x, dtype))
        named = {i.name: a for i, a in zip(spec.inputs, args)}
        gate = gate_fn(*args, heads) if gate_fn else None
        beta = beta_fn(*args, heads) if beta_fn else None
        o_seq = []
        for t in range(end - start):
            qt, kt, vt = qs[t], ks[t], vs[t]  # [HV, K], [HV, K], [HV, V]
            S_prev = S
            if spec.decay is not Decay.NONE:
                gt = gate if gate.dim() == 0 else gate[min(t, gate.shape[0] - 1)]
                decay = torch.exp(gt).expand(HV, K) if torch.is_tensor(gt) else torch.full((HV, K), float(gt))
                P = decay[..., None] * S
            else:
                P = S
            if spec.delta:
                bt = beta[min(t, beta.shape[0] - 1)].expand(HV, K)
                r = vt - torch.einsum("hkv,hk->hv", P, kt)
                S = P + (bt * kt)[..., None] * r[:, None, :]
            else:
                S = P + kt[..., None] * vt[:, None, :]
            if spec.low_rank:
                at, btl = named["a"][t], named["b"][t]
                S = S + btl[..., None] * torch.einsum("hk,hkv->hv", at, S_prev)[:, None, :]
            if spec.bonus:
                u = named["u"][0]
                ot = torch.einsum("hkv,hk->hv", S_prev, qt) + (qt * u * kt).sum(-1, keepdim=True) * vt
            else:
                ot = torch.einsum("hkv,hk->hv", S, qt)
            ot = ot * scale
            if spec.normalize:
                z = z + kt
                ot = ot / ((qt * scale * z).sum(-1, keepdim=True) + 1e-10)
            o_seq.append(ot)
        if o_seq:
            outs[b, sl] = torch.stack(o_seq)
        finals.append(S)
        zfinals.append(z)
    final = None
    if output_final_state:
        final = torch.stack(finals)
        if spec.normalize:
            final = (final, torch.stack(zfinals))
    return outs, final
