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
    def chunk(n, c, qs, ks, vs, g, beta, named, S):
        bk = beta.expand(*ks.shape)[c] * ks[c]  # write keys
        o, S_next, mid = wy_chunk_forward(qs[c], ks[c], vs[c], bk, g[c].cumsum(0), S, scale)
        if intermediates is not None:
            seen = intermediates.setdefault(n, {key: [] for key in ("h", "w", "u", "v_new")})
            for key, x in (("h", S), ("w", mid["w"]), ("u", mid["u"]), ("v_new", mid["v_new"])):
                seen[key].append(x)
        return o, S_next

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _by_chunks(spec, chunk, q, k, v, initial_state, output_final_state, cu_seqlens, dtype, chunk_size, inputs)


def _by_chunks(spec, chunk, q, k, v, initial_state, output_final_state, cu_seqlens, dtype, chunk_size, inputs):
    """``run``'s results, each sequence chunk by chunk: ``chunk(n, c, q, k, v, g, beta, named, S)``
    gives (o [C, HV, V], end state) of the chunk ``c`` (a slice) of sequence n from start state S,
    with the sequence's q, k, v, log decay g [L, HV, K] (0 without decay), beta and raw inputs."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    outs = torch.zeros(B, T, HV, V, dtype=dtype, device=q.device)
    finals = []
    for n, b, sl, qs, ks, vs, gate, beta, named, S, _ in _sequences(spec, q, k, v, initial_state, cu_seqlens, dtype,
                                                                    inputs):
        L = sl.stop - sl.start
        g = torch.zeros(L, HV, K, dtype=dtype, device=q.device)
        if spec.decay is not Decay.NONE:
            g = g + (gate if torch.is_tensor(gate) else torch.tensor(float(gate), dtype=dtype, device=q.device))
        o_seq = []
        for c0 in range(0, L, chunk_size):
            o, S = chunk(n, slice(c0, min(c0 + chunk_size, L)), qs, ks, vs, g, beta, named, S)
            o_seq.append(o)
        if o_seq:
            outs[b, sl] = torch.cat(o_seq)
        finals.append(S)
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


def run_chunked_dplr(spec: Recurrence, q, k, v, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, dtype=torch.float64, chunk_size=64, **inputs):
    """Diagonal plus low rank (``spec.low_rank``: S_t = (diag(exp(g_t)) + b_t a_t^T) S_{t-1} +
    k_t v_t^T, inclusive readout) chunk by chunk in the WY form that chunked DPLR kernels would
    compute; ``run``'s arguments and results.

    Within a chunk from S0, with G_t the cumulative log decay and G'_t = G_t - g_t (up to the
    previous token), every token's low-rank read r_t = S_{t-1}^T a_t solves a triangular system:

        r = T (exp(G') a S0 + A_ak v),  T = (I - A_ab)^-1,
        A_ab[t, s] = a_t . exp(G'_t - G_s) b_s,  A_ak[t, s] = a_t . exp(G'_t - G_s) k_s   (s < t)
        S_C = exp(G_C) S0 + sum_s exp(G_C - G_s) (b_s r_s^T + k_s v_s^T)
        o_t = scale (q_t exp(G_t) S0 + sum_{s <= t} (q_t . exp(G_t - G_s) b_s) r_s + (q_t . exp(G_t - G_s) k_s) v_s)

    The delta rule is the case a_t = -exp(g_t) k_t, b_t = beta_t k_t, with beta_t k_t for k_t."""
    if not spec.low_rank or spec.delta or spec.bonus or spec.normalize:
        raise ValueError(f"{spec.name}: run_chunked_dplr evaluates a low-rank transition without the delta rule, "
                         "bonus or normaliser")
    def chunk(n, c, qs, ks, vs, g, beta, named, S):
        return dplr_chunk_forward(qs[c], ks[c], vs[c], named["a"][c], named["b"][c], g[c], S, scale)

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _by_chunks(spec, chunk, q, k, v, initial_state, output_final_state, cu_seqlens, dtype, chunk_size, inputs)


def _dplr_parts(q, k, v, a, b, g, S0):
    """A DPLR chunk's quantities (both passes need them): cumulative decays G, G' = G - g, the pair
    decays Dx (G'_t - G_s, s < t) and D (G_t - G_s, s <= t), A_ab, A_ak, T, the system's right
    side y, the reads r and the readout's pair sums P_b, P_k."""
    C = q.shape[0]
    G = g.cumsum(0)
    Gx = G - g
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device)
    strict = causal.tril(-1)[..., None, None]
    incl = causal.tril()[..., None, None]
    Dx = torch.exp(torch.where(strict, Gx[:, None] - G[None, :], float("-inf")))  # [t, s, HV, K], s < t
    D = torch.exp(torch.where(incl, G[:, None] - G[None, :], float("-inf")))      # s <= t
    A_ab = torch.einsum("thk,tshk,shk->hts", a, Dx, b)
    A_ak = torch.einsum("thk,tshk,shk->hts", a, Dx, k)
    Tinv = torch.linalg.inv(torch.eye(C, dtype=q.dtype, device=q.device) - A_ab)
    y = torch.einsum("thk,hkv->thv", a * torch.exp(Gx), S0) + torch.einsum("hts,shv->thv", A_ak, v)
    r = torch.einsum("hts,shv->thv", Tinv, y)
    P_b = torch.einsum("thk,tshk,shk->hts", q, D, b)
    P_k = torch.einsum("thk,tshk,shk->hts", q, D, k)
    return G, Gx, Dx, D, A_ak, Tinv, y, r, P_b, P_k


def dplr_chunk_forward(q, k, v, a, b, g, S0, scale):
    """One chunk of the DPLR recurrence (run_chunked_dplr's docstring has the math): q, k, a, b,
    g (per-token log decay) [C, HV, K], v [C, HV, V], S0 [HV, K, V]. Returns (o [C, HV, V],
    end state [HV, K, V])."""
    G, _, _, _, _, _, _, r, P_b, P_k = _dplr_parts(q, k, v, a, b, g, S0)
    o = scale * (torch.einsum("thk,hkv->thv", q * torch.exp(G), S0) + torch.einsum("hts,shv->thv", P_b, r)
                 + torch.einsum("hts,shv->thv", P_k, v))
    to_end = torch.exp(G[-1] - G)
    S_end = (torch.exp(G[-1])[..., None] * S0 + torch.einsum("shk,shv->hkv", to_end * b, r)
             + torch.einsum("shk,shv->hkv", to_end * k, v))
    return o, S_end


def dplr_chunk_backward(q, k, v, a, b, g, S0, scale, do, dS_end):
    """The gradients of dplr_chunk_forward's (o, S_end) given do [C, HV, V] and dS_end [HV, K, V],
    written out: dq, dk, da, db, dg [C, HV, K], dv [C, HV, V], dS0 [HV, K, V]. Through the
    triangular system r = T y (T = (I - A_ab)^-1): dy = T^T dr and dA_ab = dy r^T (strictly lower).
    The log decay's gradient: dG summed from each token on, dG' from the next one on."""
    C = q.shape[0]
    G, Gx, Dx, D, A_ak, Tinv, y, r, P_b, P_k = _dplr_parts(q, k, v, a, b, g, S0)
    E, Ex, to_end = torch.exp(G), torch.exp(Gx), torch.exp(G[-1] - G)
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    # the outputs and the end state -> the reads r, v, the start state and the factors
    dr = scale * torch.einsum("hts,thv->shv", P_b, do) + torch.einsum("shk,hkv->shv", to_end * b, dS_end)
    dP_b = scale * torch.einsum("thv,shv->hts", do, r)
    dP_k = scale * torch.einsum("thv,shv->hts", do, v)
    dqE = scale * torch.einsum("thv,hkv->thk", do, S0)
    dbC = torch.einsum("shv,hkv->shk", r, dS_end)
    dkC = torch.einsum("shv,hkv->shk", v, dS_end)
    # r = T y, y = exp(G') a S0 + A_ak v
    dy = torch.einsum("hst,shv->thv", Tinv, dr)
    dA_ab = torch.einsum("thv,shv->hts", dy, r) * strict
    dA_ak = torch.einsum("thv,shv->hts", dy, v) * strict
    daE = torch.einsum("thv,hkv->thk", dy, S0)
    dS0 = (scale * torch.einsum("thk,thv->hkv", q * E, do) + torch.exp(G[-1])[..., None] * dS_end
           + torch.einsum("thk,thv->hkv", a * Ex, dy))
    dv = (scale * torch.einsum("hts,thv->shv", P_k, do) + torch.einsum("shk,hkv->shv", to_end * k, dS_end)
          + torch.einsum("hts,thv->shv", A_ak, dy))
    # the pair sums: rows (a from A, q from P) and columns (b, k)
    da = (torch.einsum("hts,tshk,shk->thk", dA_ab, Dx, b) + torch.einsum("hts,tshk,shk->thk", dA_ak, Dx, k)
          + daE * Ex)
    dq = (torch.einsum("hts,tshk,shk->thk", dP_b, D, b) + torch.einsum("hts,tshk,shk->thk", dP_k, D, k)
          + dqE * E)
    db = (torch.einsum("hts,tshk,thk->shk", dA_ab, Dx, a) + torch.einsum("hts,tshk,thk->shk", dP_b, D, q)
          + dbC * to_end)
    dk = (torch.einsum("hts,tshk,thk->shk", dA_ak, Dx, a) + torch.einsum("hts,tshk,thk->shk", dP_k, D, q)
          + dkC * to_end)
    # each pair's factor (+ at its row's G' or G, - at its column's G), the tokens' own factors
    # and the end state's
    XA = (torch.einsum("hts,thk,tshk,shk->tshk", dA_ab, a, Dx, b)
          + torch.einsum("hts,thk,tshk,shk->tshk", dA_ak, a, Dx, k))
    XP = (torch.einsum("hts,thk,tshk,shk->tshk", dP_b, q, D, b)
          + torch.einsum("hts,thk,tshk,shk->tshk", dP_k, q, D, k))
    dGx = XA.sum(1) + daE * a * Ex
    dG = XP.sum(1) - XA.sum(0) - XP.sum(0) + dqE * q * E - (dbC * b + dkC * k) * to_end
    dG[-1] += ((dbC * b + dkC * k) * to_end).sum(0) + torch.exp(G[-1]) * torch.einsum("hkv,hkv->hk", S0, dS_end)
    dg = dG.flip(0).cumsum(0).flip(0) + dGx.flip(0).cumsum(0).flip(0) - dGx
    return dq, dk, dv, da, db, dg, dS0
