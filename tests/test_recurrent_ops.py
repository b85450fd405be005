"""Every fla.ops fused_recurrent_* op against the float64 reference: output, final state and
every gradient (q, k, v, initial state and each gate / beta / parameter input).

Tolerances are stated in tests/recurrent_cases.py (TOL, STATE_TOL) and are the same for every
op. The set covers lengths 1, 37 and 130, head dims that are not powers of two (48, 100),
initial state on and off, packed variable-length batches with per-sequence initial states
(one of them empty), grouped value heads (HV = 2 H) and strong decays (log gates down to -5).
"""

from __future__ import annotations

import pytest
import torch

from flagen import reference
from recurrent_cases import (ATOL_FACTOR, DEVICE, FAMILIES, STATE_TOL, TOL, Shape, chunked, make_case, qkv,
                             reference_inputs, spec_of)

# (name, shape, use initial state, cu_seqlens, strong decay)
CONFIGS = [
    ("T37_K48_V100_gqa_h0_strong", Shape(B=2, T=37, H=1, HV=2, K=48, V=100), True, None, True),
    ("T1_K100_V48", Shape(B=2, T=1, H=2, HV=2, K=100, V=48), False, None, False),
    ("varlen_T130_h0", Shape(B=1, T=130, H=1, HV=1, K=32, V=16), True, [0, 1, 37, 37, 130], True),
]


def close(name, ours, ref, tol):
    ours, ref = ours.double(), ref.double()
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    err = (ours - ref).abs().max().item()
    bound = tol * (ref.abs().max().item() + ATOL_FACTOR)  # recurrent_cases: relative, with a small floor
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"


def run_case(family, shape, use_h0, cu, strong, seed=0, chunk=False, **call):
    """Run one fla op (``chunk``: its chunk_* form) with gradients and compare everything with
    the float64 reference."""
    fn, kwargs, variant, ref_map = make_case(family, shape, strong, seed)
    ref_inputs = reference_inputs(kwargs, ref_map)  # the same tensors under the spec's names
    if chunk:
        fn, kwargs = chunked(family, fn, kwargs)
    spec = spec_of(variant)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE) if cu is not None else None
    N = shape.B if cu is None else len(cu) - 1
    gen = torch.Generator().manual_seed(seed + 1)
    h0 = None
    if use_h0:
        h0 = torch.randn(N, shape.HV, shape.K, shape.V, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
        if spec.normalize:
            z0 = torch.rand(N, 1, shape.HV, shape.K, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
            h0 = (h0, z0)
    leaves = {n: x for n, x in kwargs.items() if torch.is_tensor(x) and x.is_floating_point()}
    for x in leaves.values():
        x.requires_grad_(True)
    h0_leaves = list(h0) if isinstance(h0, tuple) else ([h0] if h0 is not None else [])
    for x in h0_leaves:
        x.requires_grad_(True)
    extra = {} if "output_final_state" in kwargs else {"output_final_state": True}
    o, ht = fn(**kwargs, initial_state=h0, cu_seqlens=cu_t, **extra, **call)

    q, k, v = qkv(kwargs)
    ref_h0 = h0
    if isinstance(h0, tuple):
        ref_h0 = (h0[0], h0[1].squeeze(1))
    ro, rht = reference.run(spec, q, k, v, scale=1.0 if family == "rwkv7" else None, initial_state=ref_h0,
                            output_final_state=True, cu_seqlens=cu_t, **ref_inputs)
    close("o", o, ro, TOL)
    if isinstance(rht, tuple):
        rht = (rht[0], rht[1].unsqueeze(1))
    if ht is not None:
        for a, b in zip(ht if isinstance(ht, tuple) else (ht,), rht if isinstance(rht, tuple) else (rht,)):
            close("final_state", a, b, STATE_TOL)

    # every gradient, through the output and (where returned) the final state
    gen = torch.Generator().manual_seed(seed + 2)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    loss, rloss = (o.double() * do).sum(), (ro * do).sum()
    if ht is not None:
        # through the final state too (both parts of the normaliser's (S, z) pair)
        for S, rS in zip(ht if isinstance(ht, tuple) else (ht,), rht if isinstance(rht, tuple) else (rht,)):
            dS = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(DEVICE)
            loss, rloss = loss + (S.double() * dS).sum(), rloss + (rS * dS).sum()
    names = list(leaves) + [f"initial_state{i}" for i in range(len(h0_leaves))]
    tensors = list(leaves.values()) + h0_leaves
    ours = torch.autograd.grad(loss, tensors, allow_unused=True)
    theirs = torch.autograd.grad(rloss, tensors, allow_unused=True)
    for n, a, b in zip(names, ours, theirs):
        if b is None:
            continue
        assert a is not None, f"d{n}: no gradient"
        close(f"d{n}", a, b, TOL)


@pytest.mark.parametrize("config", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("family", FAMILIES)
def test_against_reference(family, config):
    _, shape, use_h0, cu, strong = config
    run_case(family, shape, use_h0, cu, strong)


@pytest.mark.parametrize("family", ["gated_delta_rule", "rwkv6", "dplr"])
def test_long_fixed_length_crosses_checkpoints(family):
    """T = 130 with B = 2: the backward restarts from three forward checkpoints per sequence."""
    run_case(family, Shape(B=2, T=130, H=1, HV=1, K=16, V=16), True, None, True)


@pytest.mark.parametrize("family", ["simple_gla", "gla", "retention", "rwkv6", "dplr"])
def test_reverse(family):
    """reverse=True equals the forward recurrence over time-reversed inputs."""
    fn, kwargs, variant, ref_map = make_case(family, Shape(B=2, T=9, H=1, HV=1, K=16, V=16), strong=True)
    o, ht = fn(**kwargs, reverse=True, output_final_state=True)
    flipped = {n: (x.flip(1) if torch.is_tensor(x) and x.dim() >= 3 else x) for n, x in kwargs.items()}
    ro, rht = fn(**flipped, output_final_state=True)
    close("o", o, ro.flip(1), TOL)
    close("final_state", ht, rht, STATE_TOL)


@pytest.mark.parametrize("family", ["gated_delta_rule", "gla", "rwkv6", "kda_gate"])
def test_continuation(family):
    """Two calls with the state handed over equal one call (FLA issue 494)."""
    fn, kwargs, _, _ = make_case(family, Shape(B=2, T=20, H=1, HV=2, K=16, V=16), strong=True)
    o, ht = fn(**kwargs, output_final_state=True)
    split = 7
    first = {n: (x[:, :split] if torch.is_tensor(x) and x.dim() >= 3 else x) for n, x in kwargs.items()}
    second = {n: (x[:, split:] if torch.is_tensor(x) and x.dim() >= 3 else x) for n, x in kwargs.items()}
    o1, h1 = fn(**first, output_final_state=True)
    o2, h2 = fn(**second, initial_state=h1, output_final_state=True)
    close("o", torch.cat([o1, o2], 1), o, TOL)
    close("final_state", h2, ht, STATE_TOL)


@pytest.mark.parametrize("family", ["gated_delta_rule", "kda_gate", "rwkv6", "dplr", "retention"])
def test_causality(family):
    """Changing inputs at position t never changes outputs before t, nor their gradients."""
    fn, kwargs, _, _ = make_case(family, Shape(B=1, T=12, H=1, HV=1, K=16, V=16), strong=True)
    t = 6
    o = fn(**kwargs)[0]
    changed = {n: x.clone() if torch.is_tensor(x) else x for n, x in kwargs.items()}
    for n, x in changed.items():
        if torch.is_tensor(x) and x.dim() >= 3 and x.shape[1] == 12:
            x[:, t:] = x[:, t:] * 0.5 + 0.3
    o2 = fn(**changed)[0]
    assert torch.equal(o[:, :t], o2[:, :t])
    assert not torch.equal(o[:, t:], o2[:, t:])


@pytest.mark.parametrize("family", ["gated_delta_rule", "kda_gate", "rwkv6", "dplr", "simple_gla_gamma", "retention",
                                    "linear_attn_normalized"])
def test_decode_matches_forward(family):
    """Token-by-token decode steps, updating states in place, reproduce the sequence forward
    (with the normaliser, the state is an (S, z) pair)."""
    from flagen.runtime.op import get_op
    V = 100 if family == "linear_attn_normalized" else 12
    fn, kwargs, variant, ref_map = make_case(family, Shape(B=3, T=5, H=1, HV=2, K=20, V=V), strong=True)
    op = get_op(variant)
    q, k, v = qkv(kwargs)
    inputs = reference_inputs(kwargs, ref_map)
    scale = 1.0 if family == "rwkv7" else None
    o_ref, h_ref = op(q, k, v, scale=scale, output_final_state=True, **inputs)
    state = torch.zeros(3, 2, 20, V, device=DEVICE)
    if op.module.NORMALIZE:
        state = (state, torch.zeros(3, 2, 20, device=DEVICE))
    outs = []
    for t in range(5):
        step = {n: (x[:, t] if torch.is_tensor(x) and x.dim() >= 3 else x) for n, x in inputs.items()}
        outs.append(op.decode(q[:, t], k[:, t], v[:, t], state, scale=scale, **step))
    close("o", torch.stack(outs, 1), o_ref, TOL)
    for a, b in zip(state if isinstance(state, tuple) else (state,), h_ref if isinstance(h_ref, tuple) else (h_ref,)):
        close("state", a, b, STATE_TOL)


def test_decode_state_indices():
    """Sequences map to state slots by index; a negative slot leaves every state untouched."""
    from flagen.runtime.op import get_op
    op = get_op("gated_delta_rule")
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(3, 1, 16, generator=gen).to(DEVICE) for _ in range(2))
    v = torch.randn(3, 2, 8, generator=gen).to(DEVICE)
    g = -torch.rand(3, 2, generator=gen).to(DEVICE)
    beta = torch.rand(3, 2, generator=gen).to(DEVICE)
    state = torch.randn(5, 2, 16, 8, generator=gen).to(DEVICE)
    before = state.clone()
    idx = torch.tensor([4, -1, 1], device=DEVICE)
    o = op.decode(q, k, v, state, state_indices=idx, g=g, beta=beta)
    assert torch.equal(state[[0, 2, 3]], before[[0, 2, 3]])
    for n, slot in ((0, 4), (2, 1)):
        s = before[slot:slot + 1].clone()
        on = op.decode(q[n:n + 1], k[n:n + 1], v[n:n + 1], s, g=g[n:n + 1], beta=beta[n:n + 1])
        close("o", o[n].float(), on[0].float(), 1e-6)
        close("state", state[slot], s[0], 1e-6)


def test_decode_with_strided_inputs():
    """q, k, v given as views with other strides (a projection's split, heads transposed): o
    comes back laid out as its shape says (the kernel writes rows), equal to the contiguous
    inputs' step, and so do the states."""
    from flagen.runtime.op import get_op
    op = get_op("gated_delta_rule")
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(3, 16, 1, generator=gen).to(DEVICE).transpose(1, 2) for _ in range(2))
    v = torch.randn(3, 8, 2, generator=gen).to(DEVICE).transpose(1, 2)  # [3, 2, 8], strides (16, 1, 2)
    g = -torch.rand(3, 2, generator=gen).to(DEVICE)
    beta = torch.rand(3, 2, generator=gen).to(DEVICE)
    state = torch.randn(3, 2, 16, 8, generator=gen).to(DEVICE)
    state2 = state.clone()
    o = op.decode(q, k, v, state, g=g, beta=beta)
    o2 = op.decode(q.contiguous(), k.contiguous(), v.contiguous(), state2, g=g, beta=beta)
    assert torch.equal(o, o2) and torch.equal(state, state2)


def test_state_v_first():
    fn, kwargs, _, _ = make_case("gated_delta_rule", Shape(B=2, T=6, H=1, HV=1, K=16, V=8), strong=False)
    h0 = torch.randn(2, 1, 16, 8, device=DEVICE)
    o, ht = fn(**kwargs, initial_state=h0, output_final_state=True)
    o2, ht2 = fn(**kwargs, initial_state=h0.transpose(-1, -2), output_final_state=True, state_v_first=True)
    close("o", o2, o, 1e-6)
    close("final_state", ht2.transpose(-1, -2), ht, 1e-6)


@pytest.mark.parametrize("chunk", [False, True], ids=["recurrent", "chunk"])
def test_normaliser_with_several_value_tiles(chunk):
    """K = 128, V = 100: the recurrent kernels split V in two tiles (BV 64), of which only the
    first stores z, the divisors and dz0 and adds the normaliser's shares of dq and dk."""
    run_case("linear_attn_normalized", Shape(B=2, T=9, H=1, HV=2, K=128, V=100), True, None, False, chunk=chunk)


@pytest.mark.parametrize("use_h0", [True, False], ids=["h0", "no_h0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_one_token_without_gradients_takes_the_decode_kernel(family, use_h0, monkeypatch):
    """One token per sequence with nothing to differentiate (decoding through FLA's API) runs
    the decode kernel out of place: o and the final state equal the float64 reference, the
    initial state is left as it was, and the decode kernel is what ran (grouped value heads,
    head dims that are not powers of two)."""
    shape = Shape(B=3, T=1, H=1, HV=2, K=20, V=12)
    fn, kwargs, variant, ref_map = make_case(family, shape, strong=True, seed=5)
    spec = spec_of(variant)
    gen = torch.Generator().manual_seed(6)
    h0 = None
    if use_h0:
        h0 = torch.randn(3, 2, 20, 12, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32)
        if spec.normalize:
            h0 = (h0, torch.rand(3, 1, 2, 20, generator=gen, dtype=torch.float64).to(DEVICE, torch.float32))
    before = [x.clone() for x in (h0 if isinstance(h0, tuple) else (h0,))] if use_h0 else []
    from flagen.runtime.op import get_op
    kernels = get_op(variant).module.KERNELS
    launched = []

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launched.append(grid)
            return self.kernel[grid]
    monkeypatch.setitem(kernels, "decode", Spy(kernels["decode"]))
    with torch.no_grad():
        o, ht = fn(**{**kwargs, "output_final_state": True}, initial_state=h0)
    assert launched, "the decode kernel did not run"
    q, k, v = qkv(kwargs)
    ref_h0 = (h0[0], h0[1].squeeze(1)) if isinstance(h0, tuple) else h0
    ro, rht = reference.run(spec, q, k, v, scale=1.0 if family == "rwkv7" else None, initial_state=ref_h0,
                            output_final_state=True, **reference_inputs(kwargs, ref_map))
    close("o", o, ro, TOL)
    if isinstance(rht, tuple):
        rht = (rht[0], rht[1].unsqueeze(1))
    for a, b in zip(ht if isinstance(ht, tuple) else (ht,), rht if isinstance(rht, tuple) else (rht,)):
        close("final_state", a, b, STATE_TOL)
    for x, y in zip(h0 if isinstance(h0, tuple) else (h0,), before):
        assert torch.equal(x, y), "the initial state changed"


def _capture(fn):
    """``fn`` captured in a CUDA graph (warmed up on a side stream first, as capture asks):
    (graph, what the captured call returned)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_step_replays_in_a_cuda_graph(family):
    """One decoding step captured in a CUDA graph, through FLA's API (the initial state read,
    the final one returned) and in place (``decode(..., check_indices=False)``, slots given):
    replayed after another case's inputs are copied into the captured tensors, it returns to
    the bit what eager calls return on that case (nothing on the path reads back to the host)."""
    from flagen.runtime.op import get_op
    shape = Shape(B=3, T=1, H=1, HV=2, K=20, V=12)
    scale = 1.0 if family == "rwkv7" else None

    def case(seed):
        fn, kwargs, variant, ref_map = make_case(family, shape, strong=True, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        h0 = (torch.randn(3, 2, 20, 12, generator=gen).to(DEVICE),)
        if spec_of(variant).normalize:
            h0 += (torch.rand(3, 2, 20, generator=gen).to(DEVICE),)
        step = {n: (x[:, 0] if torch.is_tensor(x) and x.dim() >= 3 else x)
                for n, x in reference_inputs(kwargs, ref_map).items()}
        return fn, kwargs, get_op(variant), step, h0

    def api_call(fn, kwargs, h0):
        initial = (h0[0], h0[1].unsqueeze(1)) if len(h0) == 2 else h0[0]  # FLA's z is [N, 1, HV, K]
        o, ht = fn(**{**kwargs, "output_final_state": True}, initial_state=initial)
        return (o, *(ht if isinstance(ht, tuple) else (ht,)))

    def decode_call(op, kwargs, step, state, slots):
        q, k, v = (x[:, 0] for x in qkv(kwargs))
        return op.decode(q, k, v, state if len(state) == 2 else state[0], scale=scale, state_indices=slots,
                         check_indices=False, **step)

    def tensors(*trees):
        for tree in trees:
            for x in (tree.values() if isinstance(tree, dict) else tree):
                if torch.is_tensor(x):
                    yield x

    fn, kwargs, op, step, h0 = case(5)
    slots = torch.tensor([2, 0, 1], device=DEVICE)
    states = tuple(torch.zeros((4,) + s.shape[1:], device=DEVICE) for s in h0)  # a spare slot, 3
    with torch.no_grad():
        api_graph, api_out = _capture(lambda: api_call(fn, kwargs, h0))
        decode_graph, decode_out = _capture(lambda: decode_call(op, kwargs, step, states, slots))
        _, kwargs2, _, step2, h02 = case(7)
        for x, y in zip(tensors(kwargs, step, h0), tensors(kwargs2, step2, h02)):
            x.copy_(y)
        for s, s2 in zip(states, h02):
            s[slots] = s2
        api_graph.replay()
        decode_graph.replay()
        for name, a, b in zip(("o", "final state", "final z"), api_out, api_call(fn, kwargs2, h02)):
            assert torch.equal(a, b), f"{name} through FLA's API"
        eager = tuple(torch.zeros_like(s) for s in states)
        for s, s2 in zip(eager, h02):
            s[slots] = s2
        assert torch.equal(decode_out, decode_call(op, kwargs2, step2, eager, slots)), "o of decode"
        for s, e in zip(states, eager):
            assert torch.equal(s, e), "the states decode updated"
