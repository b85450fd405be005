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
            o, S_next, mid = wy_chunk_forward(qs[c], ks[c], vs[c], bk[c], g[c].cumsum(0), S, scale)
            for key, x in (("h", S), ("w", mid["w"]), ("u", mid["u"]), ("v_new", mid["v_new"])):
                seen[key].append(x)
            o_seq.append(o)
            S = S_next
        if o_seq:
            outs[b, sl] = torch.cat(o_seq)
        finals.append(S)
        if intermediates is not None:
            intermediates[n] = seen
    return outs, (torch.stack(finals) if output_final_state else None)


def _chunk_decays(G):
    """exp(G_t - G_s) [t, s, HV, K] for s <= t and 0 above (masked before exp: the exponent is
    positive there, inf under a strong decay and NaN in the backward); and its strictly lower part."""
    C = G.shape[0]
    causal = torch.ones(C, C, dtype=torch.bool, device=G.device).tril()[..., None, None]
    D = torch.exp(torch.where(causal, G[:, None] - G[None, :], float("-inf")))
    return D, D * (~torch.eye(C, dtype=torch.bool, device=G.device))[..., None, None]


def _wy_parts(q, k, v, b, G, S0):
    """A chunk's WY quantities (both passes need them): the decays D (s <= t) and Dl (s < t),
    exp(G), T = (I + A)^-1, w, u, v_new, the readout's pair sums P and the end state's keys bC."""
    C = q.shape[0]
    D, Dl = _chunk_decays(G)
    E = torch.exp(G)
    A = torch.einsum("thk,tshk,shk->hts", k, Dl, b)
    T = torch.linalg.inv(torch.eye(C, dtype=q.dtype, device=q.device) + A)  # [HV, C, C]
    w = torch.einsum("hts,shk->thk", T, E * k)
    u = torch.einsum("hts,shv->thv", T, v)
    v_new = u - torch.einsum("thk,hkv->thv", w, S0)
    P = torch.einsum("thk,tshk,shk->hts", q, D, b)  # the readout's pairs, s <= t
    bC = torch.exp(G[-1] - G) * b
    return D, Dl, E, T, w, u, v_new, P, bC


def wy_chunk_forward(q, k, v, b, G, S0, scale):
    """One chunk of the delta rule in WY form (run_chunked_delta's docstring has the math): q, k,
    b (beta * k) and G (cumulative log decay) [C, HV, K], v [C, HV, V], start state S0
    [HV, K, V]. Returns (o [C, HV, V], end state [HV, K, V], {w, u, v_new, T})."""
    _, _, E, T, w, u, v_new, P, bC = _wy_parts(q, k, v, b, G, S0)
    o = scale * (torch.einsum("thk,hkv->thv", q * E, S0) + torch.einsum("hts,shv->thv", P, v_new))
    S_end = E[-1][..., None] * S0 + torch.einsum("shk,shv->hkv", bC, v_new)
    return o, S_end, dict(w=w, u=u, v_new=v_new, T=T)


def wy_chunk_backward(q, k, v, b, G, S0, scale, do, dS_end):
    """The gradients of wy_chunk_forward's (o, S_end) given do [C, HV, V] and dS_end [HV, K, V],
    written out (no autograd): what the chunked backward kernels compute. Returns dq, dk, db,
    dG [C, HV, K] (dG with respect to the cumulative sums: the per-token log decay's gradient is
    its reverse cumulative sum), dv [C, HV, V] and dS0 [HV, K, V]. Through the triangular
    inverse by dM = -T^T dT T^T, kept strictly lower (M = I + A)."""
    C = q.shape[0]
    D, Dl, E, T, w, _, v_new, P, bC = _wy_parts(q, k, v, b, G, S0)
    kE, qE = k * E, q * E
    # outputs -> v_new, the start state, and the readout's and end state's factors
    dv_new = scale * torch.einsum("hts,thv->shv", P, do) + torch.einsum("shk,hkv->shv", bC, dS_end)
    dP = scale * torch.einsum("thv,shv->hts", do, v_new)
    dqE = scale * torch.einsum("thv,hkv->thk", do, S0)
    dbC = torch.einsum("shv,hkv->shk", v_new, dS_end)
    dS0 = (scale * torch.einsum("thk,thv->hkv", qE, do) + torch.exp(G[-1])[..., None] * dS_end
           - torch.einsum("thk,thv->hkv", w, dv_new))
    # v_new = T v - T kE S0 -> T, v, kE
    dw = -torch.einsum("thv,hkv->thk", dv_new, S0)
    dT = torch.einsum("thv,shv->hts", dv_new, v) + torch.einsum("thk,shk->hts", dw, kE)
    dv = torch.einsum("hts,thv->shv", T, dv_new)
    dkE = torch.einsum("hts,thk->shk", T, dw)
    dA = -torch.einsum("hst,hsr,hur->htu", T, dT, T) * torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    # the pair sums A (strictly lower) and P (s <= t), each pair's factor exp(G_t - G_s)
    XA = torch.einsum("hts,thk,tshk,shk->tshk", dA, k, Dl, b)
    XP = torch.einsum("hts,thk,tshk,shk->tshk", dP, q, D, b)
    dk = torch.einsum("hts,tshk,shk->thk", dA, Dl, b) + dkE * E
    dq = torch.einsum("hts,tshk,shk->thk", dP, D, b) + dqE * E
    db = (torch.einsum("hts,tshk,thk->shk", dA, Dl, k) + torch.einsum("hts,tshk,thk->shk", dP, D, q)
          + dbC * torch.exp(G[-1] - G))
    dG = (XA + XP).sum(1) - (XA + XP).sum(0) + dkE * kE + dqE * qE - dbC * bC
    dG[-1] += (dbC * bC).sum(0) + E[-1] * torch.einsum("hkv,hkv->hk", S0, dS_end)
    return dq, dk, db, dG, dv, dS0
