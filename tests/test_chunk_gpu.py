"""GPU-only cases of the chunked ops (skipped in the interpreter): a long sequence
(T = 16384) forward and backward against the float64 reference, and a forward whose q/k/v
have more than 2^31 elements (64-bit addressing), checked window by window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flagen import reference
from flagen.ir.library import BUILTINS
from flagen.runtime.op import get_op
from flagen.tune import raw_inputs
from recurrent_cases import DEVICE, STATE_TOL, TOL
from test_recurrent_ops import close

pytestmark = pytest.mark.skipif(DEVICE != "cuda", reason="GPU-only sizes")


def _inputs(spec, B, T, HV, K, gen, lo, hi):
    """Per-token log gates uniform in [lo, hi]; other inputs standard normal."""
    shapes = {"token": (B, T, HV), "token_key": (B, T, HV, K), "head": (HV,), "head_key": (HV, K)}
    out = {}
    for i in spec.inputs:
        x = torch.rand(shapes[i.shape.value], generator=gen, device="cuda")
        out[i.name] = (lo + (hi - lo) * x) if i.shape.per_token or i.name == "g_gamma" else x * 2 - 1
    return out


def _check(variant, q, k, v, h0, inputs, gen, **call):
    """The chunked op against the float64 reference: output, final state, every gradient
    (through the output and the final state). With the normaliser, q and k are made positive
    (elu + 1, as normalised linear attention uses) and states are (S, z) pairs."""
    spec = BUILTINS[variant]
    names = ["q", "k", "v", "h0", *inputs]
    leaves = [q, k, v, h0, *inputs.values()]
    if spec.normalize:
        q, k = ((F.elu(x.float()) + 1).to(x.dtype) for x in (q, k))
        z0 = torch.rand(h0.shape[:-1], generator=gen, device="cuda") * 10
        names, leaves, h0 = names + ["z0"], [q, k, v, h0, *inputs.values(), z0], (h0, z0)
    for x in leaves:
        x.requires_grad_(True)
    o, ht = get_op(variant).chunk(q, k, v, initial_state=h0, output_final_state=True, **inputs, **call)
    ro, rht = reference.run(spec, q, k, v, initial_state=h0, output_final_state=True, **inputs)
    close("o", o, ro, TOL)
    ht, rht = (ht, rht) if spec.normalize else ((ht,), (rht,))
    do = torch.randn(o.shape, generator=gen, device="cuda", dtype=torch.float64)
    loss, rloss = (o.double() * do).sum(), (ro * do).sum()
    for a, b in zip(ht, rht):
        close("final_state", a, b, STATE_TOL)
        dS = torch.randn(a.shape, generator=gen, device="cuda", dtype=torch.float64)
        loss, rloss = loss + (a.double() * dS).sum(), rloss + (b * dS).sum()
    ours = torch.autograd.grad(loss, leaves)
    theirs = torch.autograd.grad(rloss, leaves)
    for name, a, b in zip(names, ours, theirs):
        close(f"d{name}", a, b, TOL)


@pytest.mark.parametrize("variant", ["simple_gla", "gla", "retention", "rwkv6", "linear_attn_normalized"])
def test_long_sequence_fwd_bwd(variant):
    spec = BUILTINS[variant]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, K, V = 1, 16384, 1, 32, 32
    q, k, v = (torch.randn(B, T, H, K, generator=gen, device="cuda").bfloat16() for _ in range(3))
    inputs = _inputs(spec, B, T, H, K, gen, -0.2, -0.001)
    h0 = torch.randn(B, H, K, V, generator=gen, device="cuda")
    _check(variant, q, k, v, h0, inputs, gen)


def test_forward_past_2_31_elements():
    """q, k, v [1, 2^21 + 320, 8, 128] bf16: 2.15e9 elements each. Decays of at least 0.25
    per token make each output depend only on the last few hundred tokens, so 320-token
    windows (at the start, across element 2^31 and at the end) have exact references."""
    spec = BUILTINS["simple_gla"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, H, K = 1, 8, 128
    T = 2 ** 21 + 320
    assert B * T * H * K > 2 ** 31
    q, k, v = (torch.randn(B, T, H, K, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    g = -0.25 - 0.75 * torch.rand(B, T, H, generator=gen, device="cuda")
    with torch.no_grad():
        o, ht = get_op("simple_gla").chunk(q, k, v, g=g, output_final_state=True)
    crossing = 2 ** 31 // (H * K)  # the first token whose elements lie past 2^31
    for end in (320, crossing + 160, T):
        sl = slice(end - 320, end)
        ro, rht = reference.run(spec, q[:, sl], k[:, sl], v[:, sl], g=g[:, sl], output_final_state=True)
        close(f"o[{end - 64}:{end}]", o[:, end - 64:end], ro[:, -64:], TOL)
        if end == T:
            close("final_state", ht, rht, STATE_TOL)


# Head dims (and so tiles: BK, BV of 16 up to 128, several tiles per program) and chunk sizes
# swept on the compiled kernels: Triton has miscompiled some tile and warp combinations of
# these kernels on Hopper (see chunked.TILES), and only the GPU can show it.
SWEEP = [(K, V, 64) for K, V in [(16, 16), (32, 16), (100, 32), (128, 128), (256, 256)]]
SWEEP += [(48, 100, 32), (48, 100, 128)]


@pytest.mark.parametrize("K,V,chunk_size", SWEEP, ids=[f"K{k}_V{v}_BT{bt}" for k, v, bt in SWEEP])
@pytest.mark.parametrize("variant", ["linear_attn", "linear_attn_normalized", "simple_gla", "gla", "rwkv6"])
def test_head_dims_and_chunk_sizes(variant, K, V, chunk_size):
    spec = BUILTINS[variant]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, HV = 2, 150, 1, 2
    q, k = (torch.randn(B, T, H, K, generator=gen, device="cuda").bfloat16() for _ in range(2))
    v = torch.randn(B, T, HV, V, generator=gen, device="cuda").bfloat16()
    inputs = _inputs(spec, B, T, HV, K, gen, -1.0, -0.001)
    h0 = torch.randn(B, HV, K, V, generator=gen, device="cuda")
    _check(variant, q, k, v, h0, inputs, gen, chunk_size=chunk_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", ["linear_attn_normalized", "simple_gla", "gla", "rwkv6"])
def test_other_dtypes_fwd_bwd(variant, dtype):
    """fp32 and fp16 q/k/v, forward and backward, without the final state (the backward always
    recomputes states without it): Triton 3.6 has failed to compile the normaliser's chunk_fwd_h
    for fp32 in exactly that case. Same stated tolerances as bf16."""
    spec = BUILTINS[variant]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, K, V = 2, 150, 1, 48, 100
    q, k, v = (torch.randn(B, T, H, D, generator=gen, device="cuda").to(dtype) for D in (K, K, V))
    if spec.normalize:
        q, k = F.elu(q) + 1, F.elu(k) + 1
    inputs = _inputs(spec, B, T, H, K, gen, -1.0, -0.001)
    leaves = [q, k, v, *inputs.values()]
    for x in leaves:
        x.requires_grad_(True)
    o, ht = get_op(variant).chunk(q, k, v, **inputs)
    assert ht is None
    ro, _ = reference.run(spec, q, k, v, **inputs)
    close("o", o, ro, TOL)
    do = torch.randn(o.shape, generator=gen, device="cuda", dtype=torch.float64)
    ours = torch.autograd.grad((o.double() * do).sum(), leaves)
    theirs = torch.autograd.grad((ro * do).sum(), leaves)
    for name, a, b in zip(["q", "k", "v", *inputs], ours, theirs):
        close(f"d{name}", a, b, TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("pattern", ["one_channel_minus8", "minus1e4", "resets"])
@pytest.mark.parametrize("variant", ["gla", "rwkv6", "simple_gla"])
def test_extreme_decays_every_dtype(variant, pattern, dtype):
    """The compiled kernels on the hazards of test_chunk_ops.test_extreme_decays (a channel at -8
    per token, -1e4 everywhere, hard resets), in each input dtype, K = 100 (two K tiles on the
    per-key path) and chunks of 64 and 16: output, final state and every gradient."""
    from test_chunk_ops import GATE_INPUTS, _log_gates
    if variant == "simple_gla" and pattern == "one_channel_minus8":
        pytest.skip("a per-key pattern")
    spec = BUILTINS[variant]
    gen = torch.Generator().manual_seed(0)
    B, T, H, K, V = 1, 200, 1, 100, 48
    q, k = (torch.randn(B, T, H, K, generator=gen).to("cuda", dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen).to("cuda", dtype)
    h0 = torch.randn(B, H, K, V, generator=gen).to("cuda")
    log_decay = _log_gates(pattern, (B, T, H, K), gen)
    inputs = {n: f(log_decay).to("cuda", torch.float32) for n, f in GATE_INPUTS[variant].items()}
    if variant == "rwkv6":
        inputs["u"] = torch.randn(H, K, generator=gen).to("cuda")
    for chunk_size in (None, 16):
        _check(variant, q.clone(), k.clone(), v.clone(), h0.clone(), {n: x.clone() for n, x in inputs.items()},
               torch.Generator(device="cuda").manual_seed(1), chunk_size=chunk_size)


# The chunked delta rule (chunk_delta.py.j2): every kernel computes in fp32 whatever the input
# dtype, so the error is the inputs' and results' rounding: stated per dtype (relative to the
# tensor's largest value, as everywhere: tests/recurrent_cases.py).
DELTA_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DELTA_VARIANTS = ["delta_rule_l2norm", "gated_delta_rule_l2norm_gate_beta_sigmoid", "kda_l2norm_gate_beta_sigmoid",
                  "kda_gate_lower_bound_beta_2sigmoid", "dplr"]


def _check_delta(variant, dtype, K, V, lens, chunk_size=64):
    """The compiled chunked delta-rule kernels against float64: output, final state and every
    gradient, grouped value heads (HV = 2, H = 1), packed sequences of ``lens`` tokens, initial
    states."""
    spec = BUILTINS[variant]
    gen = torch.Generator(device="cuda").manual_seed(0)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    B, T, H, HV = 1, sum(lens), 1, 2
    q, k = (torch.randn(B, T, H, K, generator=gen, device="cuda") for _ in range(2))
    if spec.delta and not spec.qk_l2norm:
        # unit keys, as a model feeds them (beta ||k||^2 > 2 makes the recurrence itself blow up)
        k = F.normalize(k, dim=-1)
    q, k = q.to(dtype), k.to(dtype)
    v = torch.randn(B, T, HV, V, generator=gen, device="cuda").to(dtype)
    inputs = raw_inputs(spec, B, T, HV, K, "cuda", gen)
    h0 = torch.randn(len(lens), HV, K, V, generator=gen, device="cuda")
    tensors = {n: x for n, x in inputs.items() if torch.is_tensor(x)}
    names, leaves = ["q", "k", "v", "h0", *tensors], [q, k, v, h0, *tensors.values()]
    for x in leaves:
        x.requires_grad_(True)
    o, ht = get_op(variant).chunk(q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                  chunk_size=chunk_size, **inputs)
    ro, rht = reference.run(spec, q, k, v, initial_state=h0, output_final_state=True, cu_seqlens=cu, **inputs)
    tol = DELTA_TOL[dtype]
    close("o", o, ro, tol)
    close("final_state", ht, rht, min(tol, STATE_TOL))
    do = torch.randn(o.shape, generator=gen, device="cuda", dtype=torch.float64)
    dS = torch.randn(ht.shape, generator=gen, device="cuda", dtype=torch.float64)
    ours = torch.autograd.grad((o.double() * do).sum() + (ht.double() * dS).sum(), leaves)
    theirs = torch.autograd.grad((ro * do).sum() + (rht * dS).sum(), leaves)
    for name, a, b in zip(names, ours, theirs):
        close(f"d{name}", a, b, tol)


DELTA_DIMS = [(128, 128), (100, 48), (256, 64)]


@pytest.mark.parametrize("K,V", DELTA_DIMS, ids=[f"K{k}_V{v}" for k, v in DELTA_DIMS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("variant", DELTA_VARIANTS)
def test_delta_rule_every_dtype(variant, dtype, K, V):
    """Each input dtype and head dim (K = 256: one [256, BV] state per program), sequences of
    1, 63, 64, 65 and 107 tokens."""
    _check_delta(variant, dtype, K, V, [1, 63, 64, 65, 107])


# The head-dim sweep 16..256 and the smaller chunk sizes, in bf16 (the tiles: BK, BV from 32 up,
# the state's K rows in one tile up to 256).
DELTA_SWEEP = [(16, 16, 64), (32, 16, 64), (256, 256, 64), (48, 100, 16), (48, 100, 32)]


@pytest.mark.parametrize("K,V,chunk_size", DELTA_SWEEP, ids=[f"K{k}_V{v}_BT{bt}" for k, v, bt in DELTA_SWEEP])
@pytest.mark.parametrize("variant", ["gated_delta_rule_l2norm_gate_beta_sigmoid", "kda_l2norm_gate_beta_sigmoid",
                                     "dplr"])
def test_delta_head_dims_and_chunk_sizes(variant, K, V, chunk_size):
    _check_delta(variant, torch.bfloat16, K, V, [1, 40, 109], chunk_size)


def test_delta_forward_past_2_31_elements():
    """Gated DeltaNet with q, k, v [1, 2^21 + 320, 8, 128] bf16 (2.15e9 elements each), L2-normed
    keys (so each transition is a contraction) and log decays <= -0.25: an output depends only on
    the last few hundred tokens, so 320-token windows (at the start, across element 2^31 and at
    the end) have exact references."""
    variant = "gated_delta_rule_l2norm"
    spec = BUILTINS[variant]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, H, K = 1, 8, 128
    T = 2 ** 21 + 320
    q, k, v = (torch.randn(B, T, H, K, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    g = -0.25 - 0.75 * torch.rand(B, T, H, generator=gen, device="cuda")
    beta = torch.rand(B, T, H, generator=gen, device="cuda")
    with torch.no_grad():
        o, ht = get_op(variant).chunk(q, k, v, g=g, beta=beta, output_final_state=True)
    crossing = 2 ** 31 // (H * K)
    for end in (320, crossing + 160, T):
        sl = slice(end - 320, end)
        ro, rht = reference.run(spec, q[:, sl], k[:, sl], v[:, sl], g=g[:, sl], beta=beta[:, sl],
                                output_final_state=True)
        close(f"o[{end - 64}:{end}]", o[:, end - 64:end], ro[:, -64:], DELTA_TOL[torch.bfloat16])
        if end == T:
            close("final_state", ht, rht, STATE_TOL)


@pytest.mark.parametrize("variant", ["gated_delta_rule_l2norm_gate_beta_sigmoid", "kda_l2norm_gate_beta_sigmoid",
                                     "dplr"])
def test_delta_rule_long_sequence(variant):
    """T = 16384 in bf16 (256 chunks walked by the state kernels): forward and backward."""
    spec = BUILTINS[variant]
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, T, H, K, V = 1, 16384, 1, 64, 64
    q, k, v = (torch.randn(B, T, H, D, generator=gen, device="cuda").bfloat16() for D in (K, K, V))
    inputs = raw_inputs(spec, B, T, H, K, "cuda", gen)
    h0 = torch.randn(B, H, K, V, generator=gen, device="cuda")
    _check(variant, q, k, v, h0, inputs, gen)
