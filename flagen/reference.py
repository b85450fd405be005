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


def _sequences(spec, q, k, v, initial_state, cu_seqlens, dtype, inputs):
    """Per sequence n: (n, batch row b, token slice, q, k, v [T, HV, *] in dtype (q and k L2
    normalised if the spec says so), gate and beta evaluated, the raw inputs by name, start
    state S [HV, K, V] and z [HV, K])."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
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
        yield n, b, sl, qs, ks, vs, gate, beta, named, S, z


def run(spec: Recurrence, q, k, v, scale=None, initial_state=None, output_final_state=False,
        cu_seqlens=None, dtype=torch.float64, **inputs):
    """Reference ``(o, final_state)`` for ``spec``, with FLA's shapes (see flagen.ir.spec).

    Computes in ``dtype``; ``o`` is returned in ``dtype`` too. With the normaliser the state is
    a pair ``(S, z)``.
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    scale = K ** -0.5 if scale is None else scale
    outs = torch.zeros(B, T, HV, V, dtype=dtype, device=q.device)
    finals, zfinals = [], []
    for n, b, sl, qs, ks, vs, gate, beta, named, S, z in _sequences(spec, q, k, v, initial_state, cu_seqlens, dtype,
                                                                    inputs):
        o_seq = []
        for t in range(sl.stop - sl.start):
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


def run_chunked_delta(spec: Recurrence, q, k, v, scale=None, initial_state=None, output_final_state=False,
                      cu_seqlens=None, dtype=torch.float64, chunk_size=64, intermediates=None, **inputs):
    """The delta rule (no, scalar or per-key decay; beta per token or per key; inclusive
    readout) evaluated chunk by chunk in the WY form that the chunked kernels implement;
    ``run``'s arguments and results. ``intermediates``, a dict, receives per sequence the
    lists ``h`` (each chunk's start state [HV, K, V]), ``w``, ``u`` (T W and T V below) and
    ``v_new``, to check a kernel's stages against.

    Within a chunk of C tokens from start state S0, with g_t the log decay [HV, K] (0 without
    decay), G_t its cumulative sum, b_t = beta_t * k_t the write key and
    A[t, s] = sum_k k_t exp(G_t - G_s) b_s for s < t (0 elsewhere), T = (I + A)^-1:

        w = T (exp(G) * k),  u = T v,  v_new = u - w S0            (each token's delta residual)
        S_C = exp(G_C) S0 + sum_s (exp(G_C - G_s) b_s) v_new_s^T
        o_t = scale (q_t exp(G_t) S0 + sum_{s <= t} (q_t . exp(G_t - G_s) b_s) v_new_s)
    """
    if not spec.delta or spec.low_rank or spec.bonus or spec.normalize:
        raise ValueError(f"{spec.name}: run_chunked_delta evaluates the delta rule without low rank, bonus or "
                         "normaliser")
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    scale = K ** -0.5 if scale is None else scale
    outs = torch.zeros(B, T, HV, V, dtype=dtype, device=q.device)
    finals = []
    for n, b, sl, qs, ks, vs, gate, beta, named, S, _ in _sequences(spec, q, k, v, initial_state, cu_seqlens, dtype,
                                                                    inputs):
        L = sl.stop - sl.start
        g = torch.zeros(L, HV, K, dtype=dtype, device=q.device)
        if spec.decay is not Decay.NONE:
            g = g + (gate if torch.is_tensor(gate) else torch.tensor(float(gate), dtype=dtype, device=q.device))
        bk = beta.expand(L, HV, K) * ks  # [L, HV, K] write keys
        seen = {key: [] for key in ("h", "w", "u", "v_new")}
        o_seq = []
        for c0 in range(0, L, chunk_size):
            c = slice(c0, min(c0 + chunk_size, L))
            C = c.stop - c.start
            Gc = g[c].cumsum(0)  # [C, HV, K]
            causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()[..., None, None]
            # [t, s, HV, K] exp(G_t - G_s) for s <= t, 0 above: masked before exp, whose exponent
            # is positive there (inf under a strong decay, and NaN in the backward)
            decay = torch.exp(torch.where(causal, Gc[:, None] - Gc[None, :], float("-inf")))
            A = torch.einsum("thk,tshk,shk->hts", ks[c], decay, bk[c]) * (~torch.eye(C, dtype=torch.bool,
                                                                                    device=q.device))
            Tinv = torch.linalg.inv(torch.eye(C, dtype=dtype, device=q.device) + A)  # [HV, C, C]
            w = torch.einsum("hts,shk->thk", Tinv, torch.exp(Gc) * ks[c])
            u = torch.einsum("hts,shv->thv", Tinv, vs[c])
            v_new = u - torch.einsum("thk,hkv->thv", w, S)
            for key, x in (("h", S), ("w", w), ("u", u), ("v_new", v_new)):
                seen[key].append(x)
            qk = torch.einsum("thk,tshk,shk->hts", qs[c], decay, bk[c])  # includes s = t
            o_seq.append(scale * (torch.einsum("thk,hkv->thv", qs[c] * torch.exp(Gc), S)
                                  + torch.einsum("hts,shv->thv", qk, v_new)))
            S = torch.exp(Gc[-1])[..., None] * S + torch.einsum("shk,shv->hkv", torch.exp(Gc[-1] - Gc) * bk[c], v_new)
        if o_seq:
            outs[b, sl] = torch.cat(o_seq)
        finals.append(S)
        if intermediates is not None:
            intermediates[n] = seen
    return outs, (torch.stack(finals) if output_final_state else None)
