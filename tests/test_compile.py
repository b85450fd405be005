"""torch.compile(fullgraph=True): the fla.ops entry points and whole models trace without a graph
break (each op call is one custom op, flagen.runtime.compiled), and a compiled forward and
backward equal the eager ones. On the CPU through the interpreter with the aot_eager backend
(inductor for one op, as it needs a C++ compiler and time); on the GPU with inductor."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import fla.models as models
from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from fla.ops.kda import chunk_kda
from fla.ops.linear_attn import chunk_linear_attn
from fla.ops.rwkv7 import chunk_rwkv7
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from recurrent_cases import DEVICE
from test_models import make

BACKEND = "inductor" if DEVICE == "cuda" else "aot_eager"


def _leaves(gen, *shapes):
    return [torch.randn(*s, generator=gen).to(DEVICE).requires_grad_() for s in shapes]


def _compare(fn, args, backend=BACKEND, tol=1e-5):
    """fn(*args) (a scalar) and its gradients, eager against torch.compile(fullgraph=True)."""
    ref = fn(*args)
    ref_grads = torch.autograd.grad(ref, args)
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend=backend)(*args)
    grads = torch.autograd.grad(out, args)
    scale = lambda x: x.abs().max().clamp_min(1e-6)  # noqa: E731
    assert float((out - ref).abs().detach() / scale(ref.detach())) <= tol
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert float((a - b).abs().max() / scale(b)) <= tol, f"gradient of argument {i}"


def test_decay_ops_every_state_form():
    """Chunked and recurrent simple GLA with an initial and a final state; linear attention's
    (S, z) pairs."""
    gen = torch.Generator().manual_seed(0)
    B, T, H, K = 1, 20, 2, 16
    q, k, v, g, h0 = _leaves(gen, (B, T, H, K), (B, T, H, K), (B, T, H, K), (B, T, H), (B, H, K, K))

    def f(q, k, v, g, h0):
        o, ht = chunk_simple_gla(q, k, v, g=F.logsigmoid(g), initial_state=h0, output_final_state=True)
        o2, _ = fused_recurrent_simple_gla(q, k, v, g=F.logsigmoid(g), reverse=True)
        o3, (S, z) = chunk_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, normalize=True, output_final_state=True)
        return o.square().sum() + ht.sum() + o2.sum() + o3.sum() + S.sum() + z.sum()

    _compare(f, (q, k, v, g, h0))


def test_delta_ops_with_in_kernel_options():
    """Gated DeltaNet with the L2 norm and packed sequences, KDA with its in-kernel gate, a
    per-call constant (lower_bound) and [N, HV, V, K] states, RWKV7 (diagonal plus low rank)."""
    gen = torch.Generator().manual_seed(0)
    B, T, H, K = 1, 20, 2, 16
    q, k, v, g, beta, gk, A_log, dt_bias = _leaves(gen, (B, T, H, K), (B, T, H, K), (B, T, H, K), (B, T, H),
                                                   (B, T, H), (B, T, H, K), (H,), (H * K,))
    cu = torch.tensor([0, 7, 20], device=DEVICE)

    def f(q, k, v, g, beta, gk, A_log, dt_bias):
        o1, h1 = chunk_gated_delta_rule(q, k, v, g=F.logsigmoid(g), beta=beta.sigmoid(), cu_seqlens=cu,
                                        use_qk_l2norm_in_kernel=True, output_final_state=True)
        o2, _ = fused_recurrent_gated_delta_rule(q, k, v, g=F.logsigmoid(g), beta=beta.sigmoid(),
                                                 use_qk_l2norm_in_kernel=True)
        o3, h3 = chunk_kda(q, k, v, g=gk, beta=beta, A_log=A_log, dt_bias=dt_bias, use_gate_in_kernel=True,
                           use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True, lower_bound=-5.0,
                           output_final_state=True, state_v_first=True)
        kk = F.normalize(k, dim=-1)
        o4, _ = chunk_rwkv7(r=q, w=F.logsigmoid(gk), k=k, v=v, a=-kk, b=kk * beta.sigmoid()[..., None])
        return o1.square().sum() + h1.sum() + o2.sum() + o3.square().sum() + h3.sum() + o4.sum()

    _compare(f, (q, k, v, g, beta, gk, A_log, dt_bias))


@pytest.mark.skipif(DEVICE == "cuda", reason="the GPU run compiles every case with inductor")
@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                    reason="inductor on the CPU needs a C++ compiler")
def test_inductor_on_the_cpu():
    """Inductor takes the custom op's shape function at its word: strided inputs (a transposed
    v, a [N, HV, V, K] state) must give what it says (contiguous outputs and gradients)."""
    gen = torch.Generator().manual_seed(0)
    q, k, g, h0 = _leaves(gen, (1, 20, 2, 16), (1, 20, 2, 16), (1, 20, 2), (1, 2, 16, 16))
    vt = torch.randn(1, 2, 20, 16, generator=gen).requires_grad_()

    def f(q, k, vt, g, h0):
        o, ht = chunk_simple_gla(q, k, vt.transpose(1, 2), g=F.logsigmoid(g), initial_state=h0.transpose(-1, -2),
                                 output_final_state=True, state_v_first=True)
        return o.square().sum() + ht.sum()

    _compare(f, (q, k, vt, g, h0), backend="inductor", tol=1e-5)


def test_one_custom_op_per_call():
    """The traced graph holds the calls as flagen::run nodes (not inlined, not broken)."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    gen = torch.Generator().manual_seed(0)
    q, k, v, g = _leaves(gen, (1, 20, 2, 16), (1, 20, 2, 16), (1, 20, 2, 16), (1, 20, 2))
    torch._dynamo.reset()
    torch.compile(lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0] + fused_recurrent_simple_gla(q, k, v, g=g)[0],
                  fullgraph=True, backend=backend)(q, k, v, g)
    assert seen.count(torch.ops.flagen.run.default) == 2, seen


def test_opcheck():
    """torch.library.opcheck: schema, autograd registration and the shape function against the
    op, with a transposed v and a transposed initial state."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 12, 2, 16, generator=gen).to(DEVICE).requires_grad_() for _ in range(2))
    v = torch.randn(1, 2, 12, 16, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    g = (-torch.rand(1, 12, 2, generator=gen)).to(DEVICE).requires_grad_()
    h0 = torch.randn(1, 2, 16, 16, generator=gen).to(DEVICE).transpose(-1, -2).requires_grad_()
    args = ("chunk", "simple_gla", q, k, v, "g", [g], "", [], h0, None, None, True, None, False, 0)
    torch.library.opcheck(torch.ops.flagen.run.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_eager_errors_still_name_the_argument():
    """Under compile the op's shape function runs the op's checks: a wrong shape is the same
    clear error, not a tracing failure deep in Triton."""
    q, k, v = (torch.randn(1, 8, 2, 16, device=DEVICE) for _ in range(3))
    g = torch.randn(1, 8, 3, device=DEVICE)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="`g` must have shape"):
        torch.compile(lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0], fullgraph=True,
                      backend=BACKEND)(q, k, v, g)


CPU_FAMILIES = ["gla", "gated_deltanet", "transformer", "retnet"]


MODELS = [(m, {}) for m in sorted({c.model_type for c, _, _ in models.FAMILIES})
          if DEVICE == "cuda" or m in CPU_FAMILIES]
MODELS.append(("gla", dict(attn=dict(layers=[1], num_heads=2))))  # a hybrid


@pytest.mark.parametrize("model_type,overrides", MODELS, ids=[m + ("+attn" if o else "") for m, o in MODELS])
def test_model_trains_under_fullgraph_compile(model_type, overrides):
    """A training step (loss through the fused cross-entropy, backward) of a tiny model: one
    graph, and the same loss and parameter gradients as eager (fp32)."""
    model = make(model_type, **overrides).float().train()
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def step(ids):
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    ref = step(ids)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True, backend=BACKEND)(ids)
    grads = torch.autograd.grad(out, params, allow_unused=True)
    assert abs(float(out) - float(ref)) <= 1e-5 * abs(float(ref))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, grads, ref_grads):
        if b is None:
            assert a is None, name
            continue
        err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-6))
        assert err <= 1e-4, f"{name}: {err:.2e}"


def test_user_variant_model_trains_under_fullgraph_compile():
    """A model of a user's variant from examples/variants/ (RecurrentLayer: its op is registered
    with the custom op when the layer is built), recurrent (T <= 64) and chunked."""
    from pathlib import Path

    from test_models import TINY, VARIANT
    torch.manual_seed(0)
    root = Path(__file__).resolve().parent.parent
    config = models.RecurrentConfig(recurrence=f"{root}/{VARIANT}", **TINY, expand_k=1.0)
    model = models.RecurrentForCausalLM(config).to(DEVICE).train()
    params = list(model.parameters())
    for T in (24, 80):
        ids = torch.randint(0, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(T)).to(DEVICE)

        def step(ids):
            return model(input_ids=ids, labels=ids, use_cache=False).loss

        ref = step(ids)
        ref_grads = torch.autograd.grad(ref, params)
        torch._dynamo.reset()
        out = torch.compile(step, fullgraph=True, backend=BACKEND)(ids)
        grads = torch.autograd.grad(out, params)
        assert abs(float(out) - float(ref)) <= 1e-5 * abs(float(ref))
        for a, b in zip(grads, ref_grads):
            assert float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) <= 1e-4
