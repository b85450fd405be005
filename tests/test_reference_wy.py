"""flagen.reference.run_chunked_delta: the delta rule chunk by chunk in the WY form (what the
chunked delta-rule kernels compute, issue 11) against the token-by-token reference, and
wy_chunk_backward's explicit gradients against autograd, all in float64: output, final state and every input's gradient, across chunk sizes that do and do not
divide the length, initial states, packed sequences, grouped value heads, strong decays and
beta in (0, 2). Tolerance 1e-9 of the largest magnitude (float64 round-off of two orders of
summation)."""

from __future__ import annotations

import pytest
import torch

from flagen import reference
from recurrent_cases import Shape, make_case, qkv, reference_inputs, spec_of

FAMILIES = ["delta_rule", "delta_rule_l2norm", "gated_delta_rule", "gated_delta_rule_gate", "kda", "kda_gate"]
TOL = 1e-9


def close(name, ours, ref):
    err = (ours - ref).abs().max().item()
    bound = TOL * (ref.abs().max().item() + 0.05)
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("chunk_size", [16, 7])
@pytest.mark.parametrize("strong", [False, True], ids=["mild", "strong"])
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_delta_equals_recurrence(family, strong, chunk_size):
    s = Shape(B=2, T=37, H=1, HV=2, K=12, V=10)
    _, kwargs, variant, ref_map = make_case(family, s, strong, seed=3)
    spec = spec_of(variant)
    q, k, v = (x.double().cpu().requires_grad_() for x in qkv(kwargs))
    raw = {n: (x.double().cpu().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x)
           for n, x in reference_inputs(kwargs, ref_map).items()}
    h0 = torch.randn(2, s.HV, s.K, s.V, dtype=torch.float64, requires_grad=True)
    results = []
    for fn, extra in ((reference.run, {}), (reference.run_chunked_delta, dict(chunk_size=chunk_size))):
        o, ht = fn(spec, q, k, v, initial_state=h0, output_final_state=True, **extra, **raw)
        leaves = [q, k, v, h0, *(x for x in raw.values() if torch.is_tensor(x) and x.requires_grad)]
        gen = torch.Generator().manual_seed(0)
        loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() + \
            (ht * torch.randn(ht.shape, generator=gen, dtype=torch.float64)).sum()
        results.append([o, ht, *torch.autograd.grad(loss, leaves)])
    names = ["o", "final state", "dq", "dk", "dv", "dh0", *(f"d{n}" for n, x in raw.items()
                                                            if torch.is_tensor(x) and x.requires_grad)]
    for name, ours, ref in zip(names, results[1], results[0]):
        close(name, ours.detach(), ref.detach())


def test_packed_sequences_and_intermediates():
    """Packed variable-length input (a sequence shorter than a chunk, one of exactly a chunk) and
    the intermediates: one start state, w, u and v_new per chunk; the first chunk starts from h0."""
    s = Shape(B=1, T=41, H=2, HV=2, K=8, V=8)
    _, kwargs, variant, ref_map = make_case("gated_delta_rule", s, False, seed=4)
    spec = spec_of(variant)
    q, k, v = (x.double() for x in qkv(kwargs))
    raw = {n: x.double() for n, x in reference_inputs(kwargs, ref_map).items()}
    cu = torch.tensor([0, 5, 21, 41])
    h0 = torch.randn(3, s.HV, s.K, s.V, dtype=torch.float64)
    seen = {}
    o, ht = reference.run_chunked_delta(spec, q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                        chunk_size=16, intermediates=seen, **raw)
    ro, rht = reference.run(spec, q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu, **raw)
    close("o", o, ro)
    close("final state", ht, rht)
    assert [len(seen[n]["h"]) for n in range(3)] == [1, 1, 2]
    assert torch.equal(seen[2]["h"][0], h0[2])
    assert seen[2]["w"][1].shape == (4, s.HV, s.K) and seen[2]["v_new"][1].shape == (4, s.HV, s.V)


def test_hard_reset_and_huge_decays_stay_finite():
    """Log decays of -1e4 (exp underflows to 0: a reset within a chunk) give the recurrence's
    answer and finite gradients."""
    s = Shape(B=1, T=20, H=1, HV=1, K=8, V=8)
    _, kwargs, variant, ref_map = make_case("kda", s, False, seed=5)
    spec = spec_of(variant)
    q, k, v = (x.double() for x in qkv(kwargs))
    raw = {n: x.double() for n, x in reference_inputs(kwargs, ref_map).items()}
    raw["g"] = raw["g"].clone()
    raw["g"][:, 9] = -1e4
    raw["g"].requires_grad_()
    o, _ = reference.run_chunked_delta(spec, q, k, v, chunk_size=16, **raw)
    ro, _ = reference.run(spec, q, k, v, **raw)
    close("o", o, ro)
    (grad,) = torch.autograd.grad(o.sum(), raw["g"])
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("C", [1, 7, 16])
@pytest.mark.parametrize("strong", [False, True], ids=["mild", "strong"])
def test_explicit_chunk_backward_equals_autograd(C, strong):
    """wy_chunk_backward (the backward kernels' formulas, through the triangular inverse) against
    autograd through wy_chunk_forward: every input's gradient, the log decay's through the
    reverse cumulative sum; beta up to 2 (negative eigenvalues)."""
    gen = torch.Generator().manual_seed(C)
    HV, K, V = 2, 6, 5

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, v, S0 = rand(C, HV, K), rand(C, HV, V), rand(HV, K, V)
    k = torch.nn.functional.normalize(rand(C, HV, K), dim=-1)
    b = k * 2 * torch.rand(C, HV, 1, generator=gen, dtype=torch.float64)
    g = -torch.rand(C, HV, K, generator=gen, dtype=torch.float64) * (20 if strong else 0.5)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, b, g, S0)]
    o, S_end, _ = reference.wy_chunk_forward(*leaves[:4], leaves[4].cumsum(0), leaves[5], 0.25)
    do, dS_end = rand(*o.shape), rand(*S_end.shape)
    ref = torch.autograd.grad((o * do).sum() + (S_end * dS_end).sum(), leaves)
    dq, dk, db, dG, dv, dS0 = reference.wy_chunk_backward(q, k, v, b, g.cumsum(0), S0, 0.25, do, dS_end)
    dg = dG.flip(0).cumsum(0).flip(0)
    for name, ours, r in zip(["dq", "dk", "dv", "db", "dg", "dS0"], (dq, dk, dv, db, dg, dS0), ref):
        close(name, ours, r)


def test_refuses_what_it_does_not_evaluate():
    with pytest.raises(ValueError, match="delta rule"):
        q = torch.zeros(1, 4, 1, 8, dtype=torch.float64)
        reference.run_chunked_delta(spec_of("gla"), q, q, q, g=q)


@pytest.mark.parametrize("chunk_size", [16, 7])
@pytest.mark.parametrize("strong", [False, True], ids=["mild", "strong"])
@pytest.mark.parametrize("family", ["dplr", "rwkv7"])
def test_chunked_dplr_equals_recurrence(family, strong, chunk_size):
    """run_chunked_dplr (the WY form chunked DPLR kernels would compute) against the token-by-token
    reference: output, final state and every gradient (through autograd), packed sequences too."""
    s = Shape(B=1, T=37, H=1, HV=2, K=12, V=10)
    _, kwargs, variant, ref_map = make_case(family, s, strong, seed=5)
    spec = spec_of(variant)
    q, k, v = (x.double().cpu().requires_grad_() for x in qkv(kwargs))
    raw = {n: x.double().cpu().requires_grad_() for n, x in reference_inputs(kwargs, ref_map).items()}
    cu = torch.tensor([0, 5, 21, 37])
    h0 = torch.randn(3, s.HV, s.K, s.V, dtype=torch.float64, requires_grad=True)
    scale = 1.0 if family == "rwkv7" else None
    results = []
    for fn, extra in ((reference.run, {}), (reference.run_chunked_dplr, dict(chunk_size=chunk_size))):
        o, ht = fn(spec, q, k, v, scale=scale, initial_state=h0, output_final_state=True, cu_seqlens=cu, **extra,
                   **raw)
        gen = torch.Generator().manual_seed(0)
        loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() + \
            (ht * torch.randn(ht.shape, generator=gen, dtype=torch.float64)).sum()
        results.append([o, ht, *torch.autograd.grad(loss, [q, k, v, h0, *raw.values()])])
    names = ["o", "final state", "dq", "dk", "dv", "dh0", *(f"d{n}" for n in raw)]
    for name, ours, ref in zip(names, results[1], results[0]):
        close(name, ours.detach(), ref.detach())


@pytest.mark.parametrize("strong", [False, True], ids=["mild", "strong"])
@pytest.mark.parametrize("C", [1, 7, 16])
def test_dplr_chunk_backward_equals_autograd(C, strong):
    """dplr_chunk_backward's explicit gradients (what chunked DPLR backward kernels would compute)
    against autograd through dplr_chunk_forward, RWKV7-like inputs (a = -kk, b = kk * a_rate)."""
    gen = torch.Generator().manual_seed(C)
    HV, K, V = 2, 6, 5

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    q, k, v = rnd(C, HV, K), rnd(C, HV, K), rnd(C, HV, V)
    kk = torch.nn.functional.normalize(rnd(C, HV, K), dim=-1)
    a, b = -kk, kk * torch.rand(C, HV, 1, generator=gen, dtype=torch.float64)
    g = -torch.rand(C, HV, K, generator=gen, dtype=torch.float64) * (5.0 if strong else 0.5)
    S0, do, dS = rnd(HV, K, V), rnd(C, HV, V), rnd(HV, K, V)
    leaves = [x.requires_grad_() for x in (q, k, v, a, b, g, S0)]
    o, S_end = reference.dplr_chunk_forward(q, k, v, a, b, g, S0, 0.7)
    expected = torch.autograd.grad((o * do).sum() + (S_end * dS).sum(), leaves)
    with torch.no_grad():
        ours = reference.dplr_chunk_backward(q, k, v, a, b, g, S0, 0.7, do, dS)
    for name, x, y in zip(["dq", "dk", "dv", "da", "db", "dg", "dS0"], ours, expected):
        close(name, x, y)
