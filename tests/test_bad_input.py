"""Bad input to a generated op raises a clear ValueError / TypeError naming the argument, before
any kernel runs; the same calls with good arguments succeed (so every check here can fail).

Kernels run in Triton's interpreter on the CPU (tests/conftest.py) at tiny shapes. A tensor on
another device needs a second device to test for real; the `meta` device stands in for it.
"""

from __future__ import annotations

import os

import pytest
import torch

from flagen import reference
from flagen.ir.library import BUILTINS
from flagen.runtime.op import get_op

DEVICE = os.environ.get("FLAGEN_TEST_DEVICE", "cpu")
B, T, H, HV, K, V = 2, 4, 2, 4, 8, 8
ERR = (ValueError, TypeError)


def _randn(*shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)


@pytest.fixture(scope="module")
def op():
    return get_op("gated_delta_rule")


@pytest.fixture
def args():
    """Good arguments for gated_delta_rule: q, k [B,T,H,K], v [B,T,HV,V], g, beta [B,T,HV]."""
    q = _randn(B, T, H, K, seed=1)
    k = torch.nn.functional.normalize(_randn(B, T, H, K, seed=2), dim=-1)
    v = _randn(B, T, HV, V, seed=3)
    g = -torch.rand(B, T, HV, generator=torch.Generator().manual_seed(4)).to(DEVICE) * 0.5
    beta = torch.rand(B, T, HV, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    return dict(q=q, k=k, v=v, g=g, beta=beta)


def _call(op, a, **kw):
    a = dict(a)
    q, k, v = a.pop("q"), a.pop("k"), a.pop("v")
    return op(q, k, v, **a, **kw)


def _ref(spec_name, a, **kw):
    a = {n: (x.cpu() if torch.is_tensor(x) else x) for n, x in a.items()}
    q, k, v = a.pop("q"), a.pop("k"), a.pop("v")
    kw = {n: (x.cpu() if torch.is_tensor(x) else x) for n, x in kw.items()}
    return reference.run(BUILTINS[spec_name], q, k, v, **a, **kw)


def _close(ours, ref):
    torch.testing.assert_close(ours.detach().cpu().double(), ref, rtol=1e-4, atol=1e-4)


# --- the positive controls ----------------------------------------------------------------------

def test_valid_call_succeeds(op, args):
    h0 = _randn(B, HV, K, V, seed=6)
    o, ht = _call(op, args, initial_state=h0, output_final_state=True, scale=0.5)
    assert o.shape == (B, T, HV, V) and o.dtype == torch.float32
    assert ht.shape == (B, HV, K, V) and ht.dtype == torch.float32
    ro, rht = _ref("gated_delta_rule", args, initial_state=h0, output_final_state=True, scale=0.5)
    _close(o, ro)
    _close(ht, rht)


def test_valid_varlen_call_succeeds(op, args):
    a = {n: x[:1] for n, x in args.items()}
    for cu in ([0, 1, 4], [0, 4], [0, 0, 2, 4]):
        cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
        h0 = _randn(len(cu) - 1, HV, K, V, seed=7)
        o, ht = _call(op, a, cu_seqlens=cu_t, initial_state=h0, output_final_state=True)
        assert ht.shape == (len(cu) - 1, HV, K, V)
        ro, rht = _ref("gated_delta_rule", a, cu_seqlens=cu_t, initial_state=h0, output_final_state=True)
        _close(o, ro)
        _close(ht, rht)
    # int64 offsets are accepted too
    _call(op, a, cu_seqlens=torch.tensor([0, 2, 4], dtype=torch.int64, device=DEVICE))


def test_valid_decode_succeeds(op, args):
    N = B
    q, k, v = args["q"][:, 0], args["k"][:, 0], args["v"][:, 0]
    g, beta = args["g"][:, 0], args["beta"][:, 0]
    h0 = _randn(N, HV, K, V, seed=8)
    state = h0.clone()
    o = op.decode(q, k, v, state, g=g, beta=beta)
    assert o.shape == (N, HV, V)
    ro, rht = reference.run(BUILTINS["gated_delta_rule"], q[:, None].cpu(), k[:, None].cpu(), v[:, None].cpu(),
                            initial_state=h0.cpu(), output_final_state=True, g=g[:, None].cpu(),
                            beta=beta[:, None].cpu())
    _close(o, ro[:, 0])
    _close(state, rht)
    # with a token axis of 1, and explicit slots into a larger state pool
    pool = torch.zeros(5, HV, K, V, device=DEVICE)
    pool[3], pool[1] = h0[0], h0[1]
    idx = torch.tensor([3, 1], dtype=torch.int64, device=DEVICE)
    o4 = op.decode(q[:, None], k[:, None], v[:, None], pool, g=g[:, None], beta=beta[:, None], state_indices=idx)
    assert o4.shape == (N, 1, HV, V)
    _close(o4[:, 0], ro[:, 0])
    _close(pool[3], rht[0])
    _close(pool[1], rht[1])
    assert (pool[[0, 2, 4]] == 0).all()


def test_valid_const_input_call_succeeds():
    op = get_op("kda_gate_lower_bound")
    a = _kda_args()
    o, _ = _call(op, a)
    assert o.shape == (1, T, HV, V)
    _close(o, _ref("kda_gate_lower_bound", a)[0])
    _call(op, dict(a, lower_bound=-3))  # an int is a number too


def _kda_args():
    gen = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    return dict(q=r(1, T, H, K), k=torch.nn.functional.normalize(r(1, T, H, K), dim=-1), v=r(1, T, HV, V),
                g=r(1, T, HV, K), beta=torch.rand(1, T, HV, generator=gen).to(DEVICE), A_log=r(HV) * 0.1,
                dt_bias=r(HV, K), lower_bound=-5.0)


# --- q, k, v ----------------------------------------------------------------------------------

def test_q_of_rank_3(op, args):
    with pytest.raises(ERR, match="`q`"):
        _call(op, dict(args, q=args["q"][0]))


def test_k_shape_mismatch(op, args):
    with pytest.raises(ERR, match="`k`"):
        _call(op, dict(args, k=args["k"][:, :, :, :K - 1]))
    with pytest.raises(ERR, match="`k`"):
        _call(op, dict(args, k=args["k"][:, :T - 1]))


def test_v_heads_not_a_multiple_of_h(op, args):
    v = _randn(B, T, H + 1, V)
    with pytest.raises(ERR, match="`v`"):
        _call(op, dict(args, v=v, g=args["g"][:, :, :H + 1], beta=args["beta"][:, :, :H + 1]))


def test_v_wrong_length(op, args):
    with pytest.raises(ERR, match="`v`"):
        _call(op, dict(args, v=args["v"][:, :T - 1]))
    with pytest.raises(ERR, match="`v`"):
        _call(op, dict(args, v=args["v"][:1]))


def test_q_float64(op, args):
    a = {n: x.double() for n, x in args.items()}
    with pytest.raises(ERR, match="`q`"):
        _call(op, a)


def test_k_dtype_differs_from_q(op, args):
    with pytest.raises(ERR, match="`k`"):
        _call(op, dict(args, k=args["k"].half()))


def test_v_dtype_differs_from_q(op, args):
    with pytest.raises(ERR, match="`v`"):
        _call(op, dict(args, v=args["v"].bfloat16()))


def test_q_not_a_tensor(op, args):
    with pytest.raises(ERR, match="`q`"):
        _call(op, dict(args, q=args["q"].tolist()))


def test_k_on_another_device(op, args):
    k = torch.empty(B, T, H, K, device="meta")
    with pytest.raises(ERR, match="`k`"):
        _call(op, dict(args, k=k))


def test_head_dim_too_large(op, args):
    big = 257
    a = dict(args, q=_randn(1, 1, 1, big), k=_randn(1, 1, 1, big), v=_randn(1, 1, 1, V),
             g=args["g"][:1, :1, :1], beta=args["beta"][:1, :1, :1])
    with pytest.raises(ERR, match="K=257"):
        _call(op, a)
    a = dict(a, q=_randn(1, 1, 1, 256), k=_randn(1, 1, 1, 256))
    _call(op, a)  # 256 is the largest allowed


# --- raw inputs ---------------------------------------------------------------------------------

def test_int_tensor_for_g(op, args):
    with pytest.raises(ERR, match="`g`"):
        _call(op, dict(args, g=torch.zeros(B, T, HV, dtype=torch.int32, device=DEVICE)))


def test_g_wrong_shape(op, args):
    with pytest.raises(ERR, match="`g`"):
        _call(op, dict(args, g=args["g"][..., None].expand(B, T, HV, K).contiguous()))
    with pytest.raises(ERR, match="`g`"):
        _call(op, dict(args, g=args["g"][:, :, :H]))


def test_g_not_a_tensor(op, args):
    with pytest.raises(ERR, match="`g`"):
        _call(op, dict(args, g=-0.1))


def test_missing_beta(op, args):
    a = dict(args)
    del a["beta"]
    with pytest.raises(ERR, match="beta"):
        _call(op, a)
    with pytest.raises(ERR, match="beta"):
        _call(op, dict(args, beta=None))


def test_unexpected_input_name(op, args):
    with pytest.raises(ERR, match="gk"):
        _call(op, dict(args, gk=args["g"]))


def test_const_input_given_as_tensor():
    op = get_op("kda_gate_lower_bound")
    a = _kda_args()
    with pytest.raises(ERR, match="lower_bound"):
        _call(op, dict(a, lower_bound=torch.tensor(-5.0)))
    with pytest.raises(ERR, match="lower_bound"):
        _call(op, dict(a, lower_bound="-5"))


def test_head_parameter_wrong_shape():
    op = get_op("kda_gate_lower_bound")
    a = _kda_args()
    with pytest.raises(ERR, match="dt_bias"):
        _call(op, dict(a, dt_bias=a["dt_bias"].flatten()))
    with pytest.raises(ERR, match="A_log"):
        _call(op, dict(a, A_log=a["A_log"][:H]))


# --- initial state, scale -------------------------------------------------------------------------

def test_initial_state_wrong_shape(op, args):
    with pytest.raises(ERR, match="initial_state"):
        _call(op, args, initial_state=torch.zeros(B, HV, K, V + 1, device=DEVICE))
    with pytest.raises(ERR, match="initial_state"):
        _call(op, args, initial_state=torch.zeros(B + 1, HV, K, V, device=DEVICE))


def test_initial_state_rank_3(op, args):
    with pytest.raises(ERR, match="initial_state"):
        _call(op, args, initial_state=torch.zeros(HV, K, V, device=DEVICE))


def test_initial_state_pair_without_normaliser(op, args):
    with pytest.raises(ERR, match="initial_state"):
        _call(op, args, initial_state=(torch.zeros(B, HV, K, V, device=DEVICE), torch.zeros(B, HV, K, device=DEVICE)))


@pytest.mark.parametrize("scale", [float("inf"), float("-inf"), float("nan"), "0.5", torch.ones(2)])
def test_non_finite_scale(op, args, scale):
    with pytest.raises(ERR, match="scale"):
        _call(op, args, scale=scale)


# --- cu_seqlens -------------------------------------------------------------------------------

def _packed(args):
    return {n: x[:1] for n, x in args.items()}


@pytest.mark.parametrize("cu, why", [
    ([0, 3, 1, 4], "unsorted"),
    ([1, 2, 4], "not starting at 0"),
    ([0, 2, 3], "last != T"),
    ([0, 2, 5], "last > T"),
    ([0], "a single offset"),
])
def test_cu_seqlens_bad_values(op, args, cu, why):
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ERR, match="cu_seqlens"):
        _call(op, _packed(args), cu_seqlens=cu_t)


def test_cu_seqlens_with_batch_above_one(op, args):
    with pytest.raises(ERR, match="cu_seqlens"):
        _call(op, args, cu_seqlens=torch.tensor([0, 2, 4], dtype=torch.int32, device=DEVICE))


def test_cu_seqlens_float_dtype(op, args):
    with pytest.raises(ERR, match="cu_seqlens"):
        _call(op, _packed(args), cu_seqlens=torch.tensor([0.0, 2.0, 4.0], device=DEVICE))


def test_cu_seqlens_2d(op, args):
    with pytest.raises(ERR, match="cu_seqlens"):
        _call(op, _packed(args), cu_seqlens=torch.tensor([[0, 2, 4]], dtype=torch.int32, device=DEVICE))


def test_cu_seqlens_initial_state_must_match_sequences(op, args):
    cu_t = torch.tensor([0, 1, 4], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ERR, match="initial_state"):
        _call(op, _packed(args), cu_seqlens=cu_t, initial_state=torch.zeros(1, HV, K, V, device=DEVICE))


# --- decode --------------------------------------------------------------------------------------

@pytest.fixture
def step(args):
    """Good decode arguments: q, k [N,H,K], v [N,HV,V], g, beta [N,HV], state [N,HV,K,V] fp32."""
    a = {n: x[:, 0] for n, x in args.items()}
    a["state"] = _randn(B, HV, K, V, seed=9)
    return a


def _decode(op, a, **kw):
    a = dict(a)
    q, k, v, state = a.pop("q"), a.pop("k"), a.pop("v"), a.pop("state")
    return op.decode(q, k, v, state, **a, **kw)


def test_decode_state_not_float32(op, step):
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(ERR, match="`state`"):
            _decode(op, dict(step, state=step["state"].to(dtype)))


def test_decode_state_wrong_shape(op, step):
    with pytest.raises(ERR, match="`state`"):
        _decode(op, dict(step, state=torch.zeros(B, HV, K, V + 1, device=DEVICE)))
    with pytest.raises(ERR, match="`state`"):
        _decode(op, dict(step, state=torch.zeros(B, HV, K, device=DEVICE)))
    with pytest.raises(ERR, match="`state`"):  # fewer slots than sequences, no indices
        _decode(op, dict(step, state=torch.zeros(B - 1, HV, K, V, device=DEVICE)))
    with pytest.raises(ERR, match="`state`"):  # not contiguous: it is updated in place
        _decode(op, dict(step, state=torch.zeros(B, HV, V, K, device=DEVICE).transpose(2, 3)))


def test_decode_state_indices_wrong_length(op, step):
    before = step["state"].clone()
    with pytest.raises(ERR, match="state_indices"):
        _decode(op, step, state_indices=torch.tensor([0], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ERR, match="state_indices"):
        _decode(op, step, state_indices=torch.tensor([0.0, 1.0], device=DEVICE))
    assert torch.equal(step["state"], before), "a rejected call must not touch the state"


def test_decode_q_with_two_tokens(op, step):
    a = {n: (x[:, None].expand(x.shape[0], 2, *x.shape[1:]) if n in ("q", "k", "v", "g", "beta") else x)
         for n, x in step.items()}
    with pytest.raises(ERR, match="`q`"):
        _decode(op, a)


def test_decode_checks_inputs_like_a_call(op, step):
    with pytest.raises(ERR, match="`g`"):
        _decode(op, dict(step, g=step["g"][:, :H]))
    with pytest.raises(ERR, match="`k`"):
        _decode(op, dict(step, k=step["k"].half()))
    with pytest.raises(ERR, match="foo"):
        _decode(op, dict(step, foo=step["g"]))


def test_decode_with_token_axis_rejects_unexpected_input(op, step):
    a = {n: (x[:, None] if n in ("q", "k", "v", "g", "beta") else x) for n, x in step.items()}
    with pytest.raises(ERR, match="foo"):
        _decode(op, dict(a, foo=a["g"]))


def test_decode_normaliser_state_is_a_pair(step):
    """Linear attention with the normaliser decodes from (S, z) pairs, updated in place; a bare
    S (which would silently drop the normaliser) or a malformed z is refused, and a pair is
    refused where there is no normaliser."""
    normalized, plain = get_op("linear_attn_normalized"), get_op("linear_attn")
    q, k, v = (step[n] for n in ("q", "k", "v"))
    S, z = step["state"], torch.rand(B, HV, K, device=DEVICE)
    with pytest.raises(ERR, match="`state`"):
        normalized.decode(q, k, v, S)
    with pytest.raises(ERR, match=r"`state\[1\]`"):
        normalized.decode(q, k, v, (S, torch.zeros(B, HV, K + 1, device=DEVICE)))
    with pytest.raises(ERR, match=r"`state\[1\]`"):
        normalized.decode(q, k, v, (S, z.double()))
    with pytest.raises(ERR, match="`state`"):
        plain.decode(q, k, v, (S, z))
    # the good call: o = (S + k v^T)^T q scale / (scale q . (z + k))
    S0, z0 = S.clone(), z.clone()
    o = normalized.decode(q, k, v, (S, z))
    kh, qh = k.repeat_interleave(HV // H, 1), q.repeat_interleave(HV // H, 1)
    S1 = S0 + kh[..., None] * v[..., None, :]
    z1 = z0 + kh
    scale = K ** -0.5
    ref = torch.einsum("nhk,nhkv->nhv", qh, S1) * scale / ((qh * z1).sum(-1, keepdim=True) * scale + 1e-10)
    torch.testing.assert_close(o, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, S1)
    torch.testing.assert_close(z, z1)
