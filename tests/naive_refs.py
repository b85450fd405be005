"""Independent float64 references for every built-in recurrence family.

Written from the papers' recurrences (RetNet, GLA, Mamba2, HGRN2, RWKV6, DeltaNet, Gated
DeltaNet, Kimi Delta Attention, DPLR / RWKV7), in plain PyTorch. Nothing here imports sympy,
``flagen.ir`` or ``flagen.reference``: the gate and beta parametrisations are written out by
hand, so a wrong formula in ``flagen/ir/library.py`` shows up as a mismatch against
``flagen.reference.run`` (which evaluates the spec's own expressions).

Where it makes the check more independent, the formulation differs from the token-by-token
interpreter in ``flagen/reference.py``:

* linear attention, RetNet, simple GLA, Mamba2: the parallel (attention) form
  ``o = scale ((Q K^T) * D) V`` plus the initial-state term, with the decay matrix written
  out (RetNet: ``gamma^(t-s)``; otherwise ``exp(sum_{r=s+1..t} g_r)`` as an explicit masked sum);
* GLA, HGRN2, RWKV6 (per-key decays): the same parallel form with a per-key decay tensor,
  ``o_t = scale sum_{s<=t} sum_k q_tk k_sk exp(sum_{r=s+1..t} g_rk) v_s`` (RWKV6: ``s<t`` and the
  ``u`` bonus on the diagonal);
* the delta-rule families and DPLR: the state recurrence with explicit per-token ``K x K``
  transition matrices ``S_t = M_t S_{t-1} + W_t``.

Layouts follow FLA: ``q, k [B, T, H, K]``, ``v [B, T, HV, V]`` (value head ``i`` reads query/key
head ``i // (HV // H)``), per-token inputs ``[B, T, HV]`` or ``[B, T, HV, K]``, per-head ones
``[HV]`` or ``[HV, K]``, states ``[N, HV, K, V]``, ``cu_seqlens`` packs ``N`` sequences into
``B = 1``. Every function returns ``(o [B, T, HV, V], final_state [N, HV, K, V])`` in float64
(normalised linear attention: ``final_state = (S, z)``, ``z [N, HV, K]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DT = torch.float64
L2_EPS = 1e-6      # q / sqrt(sum q^2 + eps), as FLA's l2norm
NORM_EPS = 1e-10   # o / (scale q.z + eps), as FLA's normalised linear attention


# --- plumbing --------------------------------------------------------------------------------

def _bounds(B, T, cu_seqlens):
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    assert B == 1, "packed sequences need B == 1"
    c = [int(x) for x in cu_seqlens]
    return [(0, c[i], c[i + 1]) for i in range(len(c) - 1)]


def _l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + L2_EPS)


def _drive(q, k, v, per_seq, *, scale=None, initial_state=None, cu_seqlens=None, qk_l2norm=False,
           token_inputs=None, z_state=False):
    """Split into sequences and call ``per_seq(qs, ks, vs, S0, tok, scale[, z0])``.

    ``qs, ks [L, HV, K]`` (heads already mapped to value heads), ``vs [L, HV, V]``,
    ``tok`` the per-token inputs sliced to the sequence, ``S0 [HV, K, V]``.
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    assert HV % H == 0
    head_of = torch.arange(HV) // (HV // H)   # value head i is served by q/k head i // G
    scale = K ** -0.5 if scale is None else scale
    token_inputs = token_inputs or {}
    z0_all = None
    if isinstance(initial_state, tuple):
        initial_state, z0_all = initial_state
    o = torch.zeros(B, T, HV, V, dtype=DT)
    finals, zs = [], []
    for n, (b, s0, s1) in enumerate(_bounds(B, T, cu_seqlens)):
        qs = q[b, s0:s1].to(DT)[:, head_of]
        ks = k[b, s0:s1].to(DT)[:, head_of]
        vs = v[b, s0:s1].to(DT)
        if qk_l2norm:
            qs, ks = _l2norm(qs), _l2norm(ks)
        S0 = torch.zeros(HV, K, V, dtype=DT) if initial_state is None else initial_state[n].to(DT)
        tok = {name: x[b, s0:s1].to(DT) for name, x in token_inputs.items()}
        if z_state:
            z0 = torch.zeros(HV, K, dtype=DT) if z0_all is None else z0_all[n].to(DT)
            os_, S, z = per_seq(qs, ks, vs, S0, tok, scale, z0)
            zs.append(z)
        else:
            os_, S = per_seq(qs, ks, vs, S0, tok, scale)
        o[b, s0:s1] = os_
        finals.append(S)
    final = torch.stack(finals)
    if z_state:
        final = (final, torch.stack(zs))
    return o, final


def _segsum(lg, exclusive=False):
    """``C[t, s, ...] = sum_{r : s < r <= t} lg[r, ...]`` (``r < t`` when ``exclusive``), written as an
    explicit masked sum over ``r``; ``C0[t, ...]`` the same sum from the sequence start
    (``r <= t``, resp. ``r < t``); ``Cf[s, ...] = sum_{r > s} lg[r]``; ``Call = sum_r lg[r]``."""
    L = lg.shape[0]
    t = torch.arange(L)
    upper = (t[None, None, :] < t[:, None, None]) if exclusive else (t[None, None, :] <= t[:, None, None])
    mask = (t[None, None, :] > t[None, :, None]) & upper              # [t, s, r]
    C = torch.einsum("tsr,r...->ts...", mask.to(DT), lg)
    upper0 = (t[None, :] < t[:, None]) if exclusive else (t[None, :] <= t[:, None])
    C0 = torch.einsum("tr,r...->t...", upper0.to(DT), lg)
    Cf = torch.einsum("sr,r...->s...", (t[None, :] > t[:, None]).to(DT), lg)
    return C, C0, Cf, lg.sum(0)


def _causal(L, exclusive=False):
    t = torch.arange(L)
    return (t[None, :] < t[:, None]) if exclusive else (t[None, :] <= t[:, None])   # [t, s]


def _scalar_decay_parallel(qs, ks, vs, S0, scale, D, d0, dfin, dall):
    """``o = scale (((Q K^T) * D) V + d0 * (Q S0))``, ``S_L = sum_s dfin_s k_s v_s^T + dall S0``.

    ``D [t, s, HV]`` the decay from token ``s`` to ``t`` (zero above the diagonal),
    ``d0 [t, HV]`` from the initial state to ``t``, ``dfin [s, HV]`` from ``s`` to the end,
    ``dall [HV]`` from the initial state to the end.
    """
    A = torch.einsum("thk,shk->tsh", qs, ks) * D
    o = torch.einsum("tsh,shv->thv", A, vs) + d0[..., None] * torch.einsum("thk,hkv->thv", qs, S0)
    S = torch.einsum("sh,shk,shv->hkv", dfin, ks, vs) + dall[:, None, None] * S0
    return scale * o, S


def _key_decay_parallel(qs, ks, vs, S0, scale, lg, u=None):
    """Per-key decays: ``o_t = scale (sum_{s<=t} sum_k q_tk k_sk exp(C[t,s,k]) v_s
    + sum_k q_tk exp(C0[t,k]) S0[k])``; with ``u`` (RWKV6) the sum runs over ``s < t``, the
    decays stop at ``t-1`` and ``scale (q_t . (u * k_t)) v_t`` is added."""
    L = qs.shape[0]
    exclusive = u is not None
    C, C0, Cf, Call = _segsum(lg, exclusive=exclusive)
    D = torch.where(_causal(L, exclusive)[:, :, None, None], torch.exp(C), torch.zeros((), dtype=DT))
    A = torch.einsum("thk,shk,tshk->tsh", qs, ks, D)
    o = torch.einsum("tsh,shv->thv", A, vs) + torch.einsum("thk,thk,hkv->thv", qs, torch.exp(C0), S0)
    if u is not None:
        o = o + (qs * u[None] * ks).sum(-1)[..., None] * vs
    S = torch.einsum("shk,shk,shv->hkv", torch.exp(Cf), ks, vs) + torch.exp(Call)[..., None] * S0
    return scale * o, S


def _scalar_from_log(lg):
    """The decay tensors of :func:`_scalar_decay_parallel` from per-token log decays ``[L, HV]``."""
    L = lg.shape[0]
    C, C0, Cf, Call = _segsum(lg)
    D = torch.where(_causal(L)[:, :, None], torch.exp(C), torch.zeros((), dtype=DT))
    return D, torch.exp(C0), torch.exp(Cf), torch.exp(Call)


def _transition_scan(qs, S0, scale, M, W):
    """``S_t = M_t S_{t-1} + W_t``, ``o_t = scale S_t^T q_t``; ``M [L, HV, K, K]``, ``W [L, HV, K, V]``."""
    S = S0
    outs = []
    for t in range(qs.shape[0]):
        S = M[t] @ S + W[t]
        outs.append(scale * (S.transpose(-1, -2) @ qs[t][..., None])[..., 0])
    o = torch.stack(outs) if outs else torch.zeros(0, *S0.shape[:1], S0.shape[2], dtype=DT)
    return o, S


def _beta_act(beta, activation):
    if activation is None:
        return beta
    if activation == "sigmoid":
        return torch.sigmoid(beta)
    if activation == "2sigmoid":   # FLA's allow_neg_eigval: beta in (0, 2)
        return 2.0 * torch.sigmoid(beta)
    raise ValueError(activation)


def _delta_transitions(ks, vs, beta, decay):
    """Delta rule with decay: ``M_t = (I - beta_t k_t k_t^T) diag(decay_t)``, ``W_t = beta_t k_t v_t^T``.
    ``beta [L, HV]``, ``decay [L, HV, K]``."""
    L, HV, K = ks.shape
    eye = torch.eye(K, dtype=DT).expand(L, HV, K, K)
    kkT = ks[..., :, None] * ks[..., None, :]
    M = (eye - beta[..., None, None] * kkT) @ torch.diag_embed(decay)
    W = beta[..., None, None] * ks[..., :, None] * vs[..., None, :]
    return M, W


# --- families ----------------------------------------------------------------------------------

def naive_linear_attn(q, k, v, scale=None, initial_state=None, cu_seqlens=None, normalize=False):
    """Linear attention (Katharopoulos et al.): ``S_t = S_{t-1} + k_t v_t^T``, ``o_t = scale S_t^T q_t``;
    normalised: ``o_t / (scale q_t . z_t + 1e-10)``, ``z_t = z_0 + sum_{s<=t} k_s``. Parallel form."""

    def per_seq(qs, ks, vs, S0, tok, scale, z0=None):
        L = qs.shape[0]
        A = torch.einsum("thk,shk->tsh", qs, ks) * _causal(L)[:, :, None]
        o = scale * (torch.einsum("tsh,shv->thv", A, vs) + torch.einsum("thk,hkv->thv", qs, S0))
        S = S0 + torch.einsum("shk,shv->hkv", ks, vs)
        if not normalize:
            return o, S
        z = z0[None] + torch.cumsum(ks, 0)                        # [L, HV, K]
        o = o / (scale * (qs * z).sum(-1, keepdim=True) + NORM_EPS)
        return o, S, z0 + ks.sum(0)

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  z_state=normalize)


def naive_retention(q, k, v, scale=None, initial_state=None, cu_seqlens=None):
    """RetNet (Sun et al. 2023): head ``h`` (state / value head) decays with
    ``gamma_h = 1 - 2^(-5-h)``; parallel form with ``D[t, s] = gamma^(t-s)``."""
    HV = v.shape[2]
    gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(HV, dtype=DT))

    def per_seq(qs, ks, vs, S0, tok, scale):
        L = qs.shape[0]
        t = torch.arange(L, dtype=DT)
        dist = t[:, None] - t[None, :]                               # t - s
        D = torch.where(_causal(L)[:, :, None], gamma ** dist[..., None], torch.zeros((), dtype=DT))
        d0 = gamma ** (t[:, None] + 1)                               # t + 1 steps from the initial state
        dfin = gamma ** (L - 1 - t[:, None])
        return _scalar_decay_parallel(qs, ks, vs, S0, scale, D, d0, dfin, gamma ** L)

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens)


def naive_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, cu_seqlens=None):
    """Simple GLA / lightning attention: ``S_t = exp(g_t) S_{t-1} + k_t v_t^T`` with a per-token,
    per-head log decay ``g [B, T, HV]``, or the per-head constant ``g_gamma [HV]``."""
    assert (g is None) != (g_gamma is None)
    B, T, HV = v.shape[0], v.shape[1], v.shape[2]
    if g is None:
        g = g_gamma.to(DT)[None, None].expand(B, T, HV)
    return _scalar_log_decay(q, k, v, g, scale, initial_state, cu_seqlens)


def naive_mamba2(q, k, v, g, A_log, dt_bias, scale=None, initial_state=None, cu_seqlens=None):
    """Mamba2 / SSD decay: ``dt = softplus(g + dt_bias)``, ``A = -exp(A_log)``, decay ``exp(A dt)``
    (``A_log, dt_bias [HV]``)."""
    dt = F.softplus(g.to(DT) + dt_bias.to(DT))
    A = -torch.exp(A_log.to(DT))
    return _scalar_log_decay(q, k, v, A * dt, scale, initial_state, cu_seqlens)


def _scalar_log_decay(q, k, v, lg, scale, initial_state, cu_seqlens):
    def per_seq(qs, ks, vs, S0, tok, scale):
        return _scalar_decay_parallel(qs, ks, vs, S0, scale, *_scalar_from_log(tok["lg"]))

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  token_inputs={"lg": lg})


def naive_gla(q, k, v, g, scale=None, initial_state=None, cu_seqlens=None):
    """GLA (Yang et al. 2024): ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``g [B, T, HV, K]``."""
    return _key_log_decay(q, k, v, g.to(DT), scale, initial_state, cu_seqlens)


def naive_hgrn2(q, k, v, f, scale=None, initial_state=None, cu_seqlens=None):
    """HGRN2 (Qin et al. 2024): forget gate ``sigmoid(f_t)`` per key: log decay ``log sigmoid(f_t)``."""
    return _key_log_decay(q, k, v, F.logsigmoid(f.to(DT)), scale, initial_state, cu_seqlens)


def _key_log_decay(q, k, v, lg, scale, initial_state, cu_seqlens, u=None):
    def per_seq(qs, ks, vs, S0, tok, scale):
        return _key_decay_parallel(qs, ks, vs, S0, scale, tok["lg"], u=u)

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  token_inputs={"lg": lg})


def naive_rwkv6(q, k, v, w, u, scale=None, initial_state=None, cu_seqlens=None):
    """RWKV6 (Peng et al. 2024): ``S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T``, readout of the state
    before the token plus the bonus: ``o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T r_t``
    (``w`` the log decay ``[B, T, HV, K]``, ``u [HV, K]``)."""
    return _key_log_decay(q, k, v, w.to(DT), scale, initial_state, cu_seqlens, u=u.to(DT))


def naive_delta_rule(q, k, v, beta, scale=None, initial_state=None, cu_seqlens=None,
                     use_qk_l2norm_in_kernel=False):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024): ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``."""

    def per_seq(qs, ks, vs, S0, tok, scale):
        decay = torch.ones_like(ks)
        return _transition_scan(qs, S0, scale, *_delta_transitions(ks, vs, tok["beta"], decay))

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  qk_l2norm=use_qk_l2norm_in_kernel, token_inputs={"beta": beta})


def naive_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, cu_seqlens=None,
                           use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None, dt_bias=None,
                           beta_activation=None):
    """Gated DeltaNet (Yang et al. 2025): ``S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T``.

    ``use_gate_in_kernel``: ``g`` is raw, the log decay is Mamba2's ``-exp(A_log) softplus(g + dt_bias)``
    (``A_log, dt_bias [HV]``). ``beta_activation``: None, 'sigmoid' or '2sigmoid'."""
    g = g.to(DT)
    if use_gate_in_kernel:
        g = -torch.exp(A_log.to(DT)) * F.softplus(g + dt_bias.to(DT))
    beta = _beta_act(beta.to(DT), beta_activation)

    def per_seq(qs, ks, vs, S0, tok, scale):
        decay = torch.exp(tok["g"])[..., None].expand_as(ks)
        return _transition_scan(qs, S0, scale, *_delta_transitions(ks, vs, tok["beta"], decay))

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  qk_l2norm=use_qk_l2norm_in_kernel, token_inputs={"g": g, "beta": beta})


def naive_kda(q, k, v, g, beta, scale=None, initial_state=None, cu_seqlens=None, use_qk_l2norm_in_kernel=False,
              use_gate_in_kernel=False, A_log=None, dt_bias=None, lower_bound=None, beta_activation=None):
    """Kimi Delta Attention: ``S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T``.

    ``use_gate_in_kernel``: ``g [B, T, HV, K]`` is raw and the log decay is
    ``-exp(A_log) softplus(g + dt_bias)``, or with ``lower_bound`` (< 0) the bounded gate
    ``lower_bound * sigmoid(exp(A_log) (g + dt_bias))`` (``A_log [HV]``, ``dt_bias [HV, K]``)."""
    g = g.to(DT)
    if use_gate_in_kernel:
        A = torch.exp(A_log.to(DT))[:, None]                       # [HV, 1]
        x = g + dt_bias.to(DT)
        g = -A * F.softplus(x) if lower_bound is None else lower_bound * torch.sigmoid(A * x)
    beta = _beta_act(beta.to(DT), beta_activation)

    def per_seq(qs, ks, vs, S0, tok, scale):
        return _transition_scan(qs, S0, scale, *_delta_transitions(ks, vs, tok["beta"], torch.exp(tok["g"])))

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  qk_l2norm=use_qk_l2norm_in_kernel, token_inputs={"g": g, "beta": beta})


def naive_dplr(q, k, v, gk, a, b, scale=None, initial_state=None, cu_seqlens=None):
    """Diagonal plus low rank (RWKV7 with ``q = r``, ``gk = w``):
    ``S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = scale S_t^T q_t``."""

    def per_seq(qs, ks, vs, S0, tok, scale):
        M = torch.diag_embed(torch.exp(tok["gk"])) + tok["b"][..., :, None] * tok["a"][..., None, :]
        W = ks[..., :, None] * vs[..., None, :]
        return _transition_scan(qs, S0, scale, M, W)

    return _drive(q, k, v, per_seq, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  token_inputs={"gk": gk, "a": a, "b": b})
