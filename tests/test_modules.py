"""fla.modules against FLA 0.6.0's recorded layouts (tests/records/fla060_layouts.json: constructor
and forward signatures, parameter and buffer names, shapes and dtypes, submodules, attributes)
and against plain float64 PyTorch formulas, forward and backward.

Tolerance: fp32 inputs, every output and gradient within TOL = 1e-5 of the float64 formula,
relative to the reference's largest magnitude (the modules compute in fp32). On the GPU run
(FLAGEN_TEST_DEVICE=cuda) the formula checks run on the GPU.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fla.modules as modules
from fla.modules.convolution import causal_conv1d
from recurrent_cases import DEVICE

RECORDS = json.loads((Path(__file__).parent / "records" / "fla060_layouts.json").read_text())["modules"]
TOL = 1e-5
# FLA's swiglu is an autograd Function's apply: (*args, **kwargs) is not a signature to match
UNMATCHED_SIGNATURES = {"swiglu"}


def _signature(fn):
    return [(p.name, repr(p.default) if p.default is not p.empty else None)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _recorded(sig):
    return [(p["name"], p.get("default")) for p in sig["params"]]


@pytest.mark.parametrize("name", [n for n in RECORDS if n != "__functions__"])
def test_module_layout_matches_fla(name):
    rec = RECORDS[name]
    cls = getattr(modules, name)
    assert _signature(cls.__init__) == _recorded(rec["init"]), "constructor signature"
    assert _signature(cls.forward) == _recorded(rec["forward"]), "forward signature"
    for entry in rec["configs"]:
        torch.manual_seed(0)
        mod = cls(**entry["config"])
        params = [[n, list(p.shape), str(p.dtype).replace("torch.", "")] for n, p in mod.named_parameters()]
        assert params == [p[:3] for p in entry["parameters"]], entry["config"]
        sd = set(mod.state_dict())
        buffers = [[n, list(b.shape), str(b.dtype).replace("torch.", ""), n in sd] for n, b in mod.named_buffers()]
        assert buffers == entry["buffers"], entry["config"]
        assert [[n, type(m).__name__] for n, m in mod.named_modules() if n] == entry["modules"], entry["config"]
        for attr, value in entry["attrs"].items():
            ours = getattr(mod, attr)
            ours = list(ours) if isinstance(ours, tuple) else ours
            assert ours == value, f"{entry['config']}: attribute {attr}"


@pytest.mark.parametrize("name", list(RECORDS["__functions__"]))
def test_function_matches_fla(name):
    rec = RECORDS["__functions__"][name]
    fn = getattr(importlib.import_module(rec["importable_from"]), name)
    if name not in UNMATCHED_SIGNATURES:
        assert _signature(fn) == _recorded(rec["signature"])


def close(name, ours, ref, tol=TOL):
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    bound = tol * max(ref.abs().max().item(), 1e-3)
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"


def check(fn, ref, inputs, names=None):
    """fn and ref on the same leaves (fn on fp32 copies, ref in float64): every output and the
    gradient of a random projection of them with respect to every input."""
    gen = torch.Generator().manual_seed(1)
    inputs = [x.to(DEVICE) for x in inputs]
    ours_in = [(x.float() if x.is_floating_point() else x).detach().requires_grad_(x.is_floating_point())
               for x in inputs]
    ref_in = [(x.double() if x.is_floating_point() else x).detach().requires_grad_(x.is_floating_point())
              for x in inputs]
    out, rout = fn(*ours_in), ref(*ref_in)
    out, rout = (out if isinstance(out, tuple) else (out,)), (rout if isinstance(rout, tuple) else (rout,))
    loss, rloss = 0, 0
    for i, (a, b) in enumerate(zip(out, rout)):
        close(f"output {i}", a, b)
        w = torch.randn(b.shape, generator=gen, dtype=torch.float64).to(b.device)
        loss, rloss = loss + (a.double() * w).sum(), rloss + (b * w).sum()
    leaves = [i for i, x in enumerate(ours_in) if x.requires_grad]
    grads = torch.autograd.grad(loss, [ours_in[i] for i in leaves], allow_unused=True)
    rgrads = torch.autograd.grad(rloss, [ref_in[i] for i in leaves], allow_unused=True)
    for i, a, b in zip(leaves, grads, rgrads):
        if b is not None:
            close(f"grad of input {(names or {}).get(i, i)}", a, b)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """The norms' two paths: the PyTorch formulas and row_norm.py's Triton kernels (on the CPU
    through the interpreter), whatever the tensors' device."""
    import fla.modules.fused_norm_gate
    import fla.modules.layernorm
    import fla.modules.layernorm_gated
    for module in (fla.modules.layernorm, fla.modules.fused_norm_gate, fla.modules.layernorm_gated):
        monkeypatch.setattr(module, "usable", lambda x, groups=1: request.param == "triton")
    return request.param


def ref_norm(x, w, b, eps, rms, groups=1):
    s = x.reshape(*x.shape[:-1], groups, -1)
    if not rms:
        s = s - s.mean(-1, keepdim=True)
    y = (s / torch.sqrt(s.square().mean(-1, keepdim=True) + eps)).reshape(x.shape)
    return y * w + (b if b is not None else 0)


@pytest.mark.parametrize("kind", ["rms", "layer", "group"])
@pytest.mark.parametrize("residual", [False, True])
def test_norms(kind, residual, backend):
    D, groups = 24, (4 if kind == "group" else 1)
    gen = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 5, D, generator=gen), torch.randn(3, 5, D, generator=gen)
    w, b = 1 + torch.randn(D, generator=gen) / 4, torch.randn(D, generator=gen) / 4
    mod = {"rms": lambda: modules.RMSNorm(D, bias=True), "layer": lambda: modules.LayerNorm(D, bias=True),
           "group": lambda: modules.GroupNorm(groups, D, bias=True)}[kind]().to(DEVICE)
    rms = kind == "rms"

    def ours(x, r, w, b):
        args, kw = ((x, r), dict(prenorm=True, residual_in_fp32=True)) if residual else ((x,), {})
        return torch.func.functional_call(mod, {"weight": w, "bias": b}, args, kw)

    def ref(x, r, w, b):
        s = x + r if residual else x
        y = ref_norm(s, w, b, 1e-5, rms, groups)
        return (y, s) if residual else y
    check(ours, ref, [x, r, w, b])


@pytest.mark.parametrize("activation", ["swish", "sigmoid"])
@pytest.mark.parametrize("layer", [False, True])
def test_gated_norms(activation, layer, backend):
    D = 20
    gen = torch.Generator().manual_seed(0)
    x, g, w = torch.randn(4, D, generator=gen), torch.randn(4, D, generator=gen), 1 + torch.randn(D, generator=gen)
    mod = (modules.FusedLayerNormGated(D, activation=activation) if layer else
           modules.FusedRMSNormGated(D, activation=activation)).to(DEVICE)

    def ours(x, g, w):
        return torch.func.functional_call(mod, {"weight": w}, (x, g))

    def ref(x, g, w):
        act = F.silu(g) if activation == "swish" else torch.sigmoid(g)
        return ref_norm(x, w, None, 1e-5, not layer) * act
    check(ours, ref, [x, g, w])


def test_norm_linear_forms(backend):
    D, O = 16, 12
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(5, D, generator=gen), torch.randn(5, D, generator=gen)
    lw, lb = torch.randn(O, D, generator=gen), torch.randn(O, generator=gen)
    rms_lin, gate_lin = modules.RMSNormLinear(D).to(DEVICE), modules.FusedRMSNormSwishGateLinear(D).to(DEVICE)
    check(lambda x, lw, lb: rms_lin(x, lw, lb),
          lambda x, lw, lb: F.linear(ref_norm(x, 1.0, None, 1e-5, True), lw, lb), [x, lw, lb])
    check(lambda x, g, lw, lb: gate_lin(x, g, lw, lb),
          lambda x, g, lw, lb: F.linear(ref_norm(x, 1.0, None, 1e-5, True) * F.silu(g), lw, lb), [x, g, lw, lb])


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [None, 6])
def test_rmsnorm_gated(norm_before_gate, group_size, backend):
    """Mamba2's RMSNormGated: rmsnorm(x) * swish(z), or rmsnorm(x * swish(z)), over groups."""
    D = 18
    gen = torch.Generator().manual_seed(0)
    x, z, w = torch.randn(2, 3, D, generator=gen), torch.randn(2, 3, D, generator=gen), 1 + torch.randn(D, generator=gen)
    mod = importlib.import_module("fla.modules.layernorm_gated").RMSNormGated(D, group_size=group_size, norm_before_gate=norm_before_gate).to(DEVICE)
    groups = 1 if group_size is None else D // group_size

    def ref(x, z, w):
        if norm_before_gate:
            return ref_norm(x, w, None, 1e-5, True, groups) * F.silu(z)
        return ref_norm(x * F.silu(z), w, None, 1e-5, True, groups)
    check(lambda x, z, w: torch.func.functional_call(mod, {"weight": w}, (x, z)), ref, [x, z, w])


def test_norms_keep_dtype_and_check_groups(backend):
    x = torch.randn(2, 8, dtype=torch.bfloat16).to(DEVICE)
    assert modules.RMSNorm(8).to(DEVICE)(x).dtype == torch.bfloat16
    y, res = modules.RMSNorm(8).to(DEVICE)(x, x, prenorm=True, residual_in_fp32=True)
    assert y.dtype == torch.bfloat16 and res.dtype == torch.float32
    with pytest.raises(ValueError, match="num_groups"):
        modules.GroupNorm(3, 8)
    with pytest.raises(ValueError, match="residual"):
        modules.RMSNorm(8).to(DEVICE)(x, x[:1])
    with pytest.raises(ValueError, match="weight"):
        modules.RMSNorm(4).to(DEVICE)(x)
    with pytest.raises(ValueError, match="activation"):
        modules.FusedRMSNormGated(8, activation="tanh")


def test_l2norm():
    x = torch.randn(3, 7, 10, generator=torch.Generator().manual_seed(0))
    check(modules.l2norm, lambda x: x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6), [x])
    assert modules.L2Norm(output_dtype=torch.bfloat16)(x).dtype == torch.bfloat16


def ref_rotary(x, pos, dim, base, interleaved, scale=None):
    """x [B, T, H, D] rotated as complex pairs by angle pos * base^(-2i/dim), times scale^(...)."""
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim)
    ang = pos[..., None].double() * inv  # [B, T, dim / 2]
    xr = x[..., :dim]
    pairs = (torch.stack([xr[..., 0::2], xr[..., 1::2]], -1) if interleaved else
             torch.stack(xr.chunk(2, -1), -1))
    z = torch.view_as_complex(pairs.contiguous()) * torch.polar(torch.ones_like(ang), ang)[:, :, None]
    if scale is not None:
        z = z * scale[:, :, None]
    out = torch.view_as_real(z)
    out = out.flatten(-2) if interleaved else torch.cat([out[..., 0], out[..., 1]], -1)
    return torch.cat([out, x[..., dim:]], -1)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("offset", ["int", "tensor", "varlen"])
def test_rotary(interleaved, offset):
    B, T, H, D, dim = 2, 9, 2, 12, 8
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, H, D, generator=gen), torch.randn(B, T, 1, D, generator=gen)
    rot = modules.RotaryEmbedding(dim, base=100.0, interleaved=interleaved).to(DEVICE)
    t = torch.arange(T)
    if offset == "int":
        kw, pos = dict(seqlen_offset=3), (t + 3)[None].expand(B, T)
    elif offset == "tensor":
        off = torch.tensor([0, 5])
        kw, pos = dict(seqlen_offset=off), t[None] + off[:, None]
    else:
        q, k = q.reshape(1, B * T, H, D), k.reshape(1, B * T, 1, D)
        cu = torch.tensor([0, 4, 18])
        kw = dict(cu_seqlens=cu, seqlen_offset=torch.tensor([1, 2]))
        pos = torch.cat([torch.arange(4) + 1, torch.arange(14) + 2])[None]
    kw = {n: x.to(DEVICE) if torch.is_tensor(x) else x for n, x in kw.items()}
    pos = pos.to(DEVICE)
    check(lambda q, k: rot(q, k, **kw),
          lambda q, k: (ref_rotary(q, pos, dim, 100.0, interleaved), ref_rotary(k, pos, dim, 100.0, interleaved)),
          [q, k])


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_at_positions(interleaved):
    """``at_positions``: position_ids [B, T] rotate each token at its position: to the bit what the tables give
    at those positions (a CUDA graph's decoding step takes this path), and against the formula."""
    B, T, H, D, dim = 2, 3, 2, 12, 8
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(B, T, H, D, generator=gen).to(DEVICE), torch.randn(B, T, 1, D, generator=gen).to(DEVICE)
    rot = modules.RotaryEmbedding(dim, base=100.0, interleaved=interleaved).to(DEVICE)
    off = torch.tensor([4, 9], device=DEVICE)
    pos = torch.arange(T, device=DEVICE)[None] + off[:, None]
    by_ids = rot.at_positions(q, k, pos)
    by_tables = rot(q, k, seqlen_offset=off, max_seqlen=20)
    for a, b in zip(by_ids, by_tables):
        assert torch.equal(a, b)
    check(lambda q, k: rot.at_positions(q, k, pos),
          lambda q, k: (ref_rotary(q, pos, dim, 100.0, interleaved), ref_rotary(k, pos, dim, 100.0, interleaved)),
          [q.cpu(), k.cpu()])
    with pytest.raises(ValueError, match="position_ids"):
        rot.at_positions(q, k, pos[:, :1])
    with pytest.raises(NotImplementedError, match="XPos"):
        modules.RotaryEmbedding(dim, scale_base=4.0).to(DEVICE).at_positions(q, k, pos)


def test_rotary_xpos():
    B, T, H, D = 1, 6, 1, 8
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, T, H, D, generator=gen), torch.randn(B, T, H, D, generator=gen)
    rot = modules.RotaryEmbedding(D, base=100.0, scale_base=4.0).to(DEVICE)
    pos = torch.arange(T)[None]
    base_scale = (torch.arange(0, D, 2, dtype=torch.float64) + 0.4 * D) / (1.4 * D)
    scale = (base_scale ** ((pos[..., None].double() - T // 2) / 4.0)).to(DEVICE)  # [1, T, D / 2]
    pos = pos.to(DEVICE)
    check(lambda q, k: rot(q, k),
          lambda q, k: (ref_rotary(q, pos, D, 100.0, False, scale), ref_rotary(k, pos, D, 100.0, False, 1 / scale)),
          [q, k])


def ref_conv(x, w, b, act, h0):
    """Each sequence x [T, D] behind its W - 1 cached inputs (h0 [D, W], newest last): conv1d."""
    W = w.shape[-1]
    if x.shape[0] == 0:
        return x[:0]
    xs = torch.cat([h0[:, 1:].t() if h0 is not None else x.new_zeros(W - 1, x.shape[1]), x], 0)
    y = F.conv1d(xs.t()[None], w[:, None], b, groups=x.shape[1])[0].t()
    return F.silu(y) if act else y


@pytest.mark.parametrize("triton_path", [False, True], ids=["torch", "triton"])
@pytest.mark.parametrize("act", [True, False])
@pytest.mark.parametrize("varlen", [False, True])
def test_short_convolution(act, varlen, triton_path, monkeypatch):
    """Both paths (the Triton one on the CPU through the interpreter): outputs, final states and
    the gradients of x, w, b (and of the cached state on the PyTorch path, which takes it)."""
    import fla.modules.causal_conv
    monkeypatch.setattr(fla.modules.causal_conv, "usable", lambda x, h0: triton_path)
    D, W = 6, 4
    gen = torch.Generator().manual_seed(0)
    lens = [5, 1, 0, 9] if varlen else [7, 7]
    x = torch.randn(1 if varlen else 2, sum(lens) if varlen else 7, D, generator=gen)
    w, b = torch.randn(D, W, generator=gen), torch.randn(D, generator=gen)
    h0 = torch.randn(len(lens), D, W, generator=gen)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEVICE) if varlen else None

    def ours(x, w, b, h0):
        h0 = h0.detach() if triton_path else h0
        return causal_conv1d(x, w, b, None, h0, True, "silu" if act else None, cu)

    def ref(x, w, b, h0):
        h0 = h0.detach() if triton_path else h0
        flat = x.reshape(-1, D)
        starts = cu.tolist() if varlen else [0, 7, 14]
        ys, finals = [], []
        for n in range(len(lens)):
            seq = flat[starts[n]:starts[n + 1]]
            ys.append(ref_conv(seq, w, b, act, h0[n]))
            finals.append(torch.cat([h0[n], seq.t()], 1)[:, -W:])
        return torch.cat(ys, 0).reshape(x.shape), torch.stack(finals)
    check(ours, ref, [x, w, b, h0])


@pytest.mark.parametrize("varlen", [True, False], ids=["packed", "fixed_length"])
def test_causal_conv_triton_across_programs(varlen, monkeypatch):
    """The Triton path where sequences cross its tiles of 64 tokens and 128 channels (the
    backward's dx reads the next tile's dpre), packed (token bounds read from index tensors) or
    of equal lengths (computed in the kernel): against the PyTorch path, float64 not needed."""
    import fla.modules.causal_conv
    gen = torch.Generator().manual_seed(0)
    D, W, lens = 130, 4, [70, 3, 77] if varlen else [70, 70, 70]
    x = torch.randn(1, sum(lens), D, generator=gen).to(DEVICE)
    w, b = torch.randn(D, W, generator=gen).to(DEVICE), torch.randn(D, generator=gen).to(DEVICE)
    h0 = torch.randn(len(lens), D, W, generator=gen).to(DEVICE)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEVICE) if varlen else None
    x = x if varlen else x.reshape(len(lens), lens[0], D)
    results = []
    for path in (False, True):
        monkeypatch.setattr(fla.modules.causal_conv, "usable", lambda x, h0: path)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y, final = causal_conv1d(*leaves, None, h0, True, "silu", cu)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).reshape(y.shape)).sum().backward()
        results.append([y, final] + [t.grad for t in leaves])
    for name, a, r in zip(["y", "final", "dx", "dw", "db"], results[1], results[0]):
        close(name, a, r)


# the Triton kernels' inputs and outputs in the input dtype (fp32 inside): each output and
# gradient within LOW_TOL of float64 on the same (rounded) inputs, relative to its largest
# magnitude: a few roundings to the dtype, 2^-8 (bf16), 2^-11 (fp16), 2^-24 (fp32)
LOW_TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("case", ["rms_prenorm", "layer", "gated", "conv", "conv_packed"])
def test_triton_kernels_in_each_dtype(case, dtype, monkeypatch):
    """row_norm.py's and causal_conv.py's kernels (forced, the interpreter on the CPU) on bf16,
    fp16 and fp32 inputs: outputs (the conv's final state, the prenorm's residual) and every
    gradient against float64 on the same values."""
    import fla.modules.causal_conv
    from fla.modules.row_norm import row_norm
    monkeypatch.setattr(fla.modules.causal_conv, "usable", lambda x, h0: True)
    gen = torch.Generator().manual_seed(0)
    D, W = 40, 4
    lens = [70, 3, 0, 9]
    rand = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    if case.startswith("conv"):
        packed = case == "conv_packed"
        x = rand(1, sum(lens), D) if packed else rand(2, 37, D)
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=DEVICE) if packed else None
        h0 = rand(len(lens) if packed else 2, D, W).to(DEVICE)
        inputs = [x, rand(D, W), rand(D)]

        names = ("dx", "dw", "db")

        def fn(x, w, b):
            return causal_conv1d(x, w, b, None, h0, True, "silu", cu)

        def ref(x, w, b):  # float64, sequence by sequence (conv1d behind each one's cached inputs)
            flat, h = x.reshape(-1, D), h0.double()
            starts = cu.tolist() if packed else [0, 37, 74]
            seqs = [flat[a:e] for a, e in zip(starts, starts[1:])]
            y = torch.cat([ref_conv(seq, w, b, True, h[n]) for n, seq in enumerate(seqs)], 0).reshape(x.shape)
            return y, torch.stack([torch.cat([h[n], seq.t()], 1)[:, -W:] for n, seq in enumerate(seqs)])
    else:
        inputs = [rand(3, 5, D), rand(3, 5, D), (1 + torch.randn(D, generator=gen) / 4), torch.randn(D, generator=gen)]
        kw = dict(rms_prenorm=dict(is_rms_norm=True, prenorm=True, residual_in_fp32=True),
                  layer=dict(is_rms_norm=False), gated=dict(is_rms_norm=True, gate="swish"))[case]
        names = ("dx", "dz" if case == "gated" else "dres", "dw", "db")

        def fn(x, r, w, b):
            if case == "gated":
                return row_norm(x, w, None, z=r, **kw)
            return row_norm(x, w, b, residual=r if case == "rms_prenorm" else None, **kw)

        def ref(x, r, w, b):
            s = x + r if case == "rms_prenorm" else x
            y = ref_norm(s, w, None if case == "gated" else b, 1e-5, kw["is_rms_norm"])
            y = y * F.silu(r) if case == "gated" else y
            return (y, s) if case == "rms_prenorm" else y
    inputs = [t.to(DEVICE).requires_grad_() for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    outs = [o for o in outs if o is not None]
    assert outs[0].dtype == dtype
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    routs = ref(*ref_in)
    routs = [o for o in (routs if isinstance(routs, tuple) else (routs,)) if o is not None]
    gen_w = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=gen_w, dtype=torch.float64).to(o.device) for o in routs]
    grads = torch.autograd.grad(sum((o.double() * w).sum() for o, w in zip(outs, weights)), inputs, allow_unused=True)
    rgrads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(routs, weights)), ref_in, allow_unused=True)
    for name, a, b in [*zip(("y", "second output"), outs, routs), *zip(names, grads, rgrads)]:
        assert (a is None) == (b is None), f"{case}: {name} is None on one side only"
        if b is not None:
            close(f"{case} {dtype} {name}", a, b, LOW_TOL[dtype])


def test_short_convolution_step_equals_forward():
    """Token by token through the cache (no autograd: the in-place step) equals one forward."""
    torch.manual_seed(0)
    conv = modules.ShortConvolution(8, 4, bias=True).to(DEVICE)
    x = torch.randn(2, 11, 8).to(DEVICE)
    with torch.no_grad():
        y, cache = conv(x, output_final_state=True)
        c = None
        steps = []
        for t in range(11):
            yt, c = conv(x[:, t:t + 1], cache=c, output_final_state=True)
            steps.append(yt)
    close("y", torch.cat(steps, 1), y)
    close("cache", c, cache)
    xm = x.clone()
    mask = torch.ones(2, 11, device=DEVICE)
    mask[1, :3] = 0
    conv(xm, mask=mask)
    assert torch.equal(xm, x), "mask must not modify the input"


def test_gated_mlp():
    torch.manual_seed(0)
    for kw in [dict(), dict(hidden_act="powlu", fuse_swiglu=False, intermediate_size=40)]:
        mlp = modules.GatedMLP(16, **kw).to(DEVICE)
        x = torch.randn(3, 16).to(DEVICE)
        g, u, d = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight

        def act(a):
            if kw.get("hidden_act") != "powlu":
                return F.silu(a)
            ap = torch.where(a > 0, a, torch.ones_like(a))
            return torch.where(a > 0, ap ** (3.0 / (ap.sqrt() + 1)), a) * torch.sigmoid(a)
        check(lambda x, g, u, d: F.linear(modules.activations.powglu(x @ g.t(), x @ u.t())
                                          if kw else modules.activations.swiglu(x @ g.t(), x @ u.t()), d),
              lambda x, g, u, d: F.linear(act(x @ g.t()) * (x @ u.t()), d), [x, g, u, d])
        out = mlp(x)
        assert out.shape == x.shape


def ref_ce(logits, target, ignore_index=-100, label_smoothing=0.0, logit_scale=1.0, softcap=None, z_scale=0.0,
           reduction="mean"):
    z = logits * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = target != ignore_index
    loss = F.cross_entropy(z, torch.where(valid, target, 0), reduction="none", label_smoothing=label_smoothing)
    loss = torch.where(valid, loss + z_scale * torch.logsumexp(z, -1).square(), 0.0)
    return loss.sum() / (valid.sum() if reduction == "mean" else 1) if reduction != "none" else loss


CE_OPTIONS = [dict(), dict(label_smoothing=0.1, logit_scale=0.7), dict(logit_softcapping=3.0, lse_square_scale=1e-2),
              dict(reduction="sum"), dict(reduction="none")]


@pytest.mark.parametrize("options", CE_OPTIONS, ids=[str(o) for o in CE_OPTIONS])
def test_cross_entropy(options):
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(9, 30, generator=gen) * 3, torch.randint(0, 30, (9,), generator=gen)
    target[2] = -100
    target = target.to(DEVICE)
    loss_fn = modules.FusedCrossEntropyLoss(**options)
    check(lambda z: loss_fn(z, target),
          lambda z: ref_ce(z, target, -100, options.get("label_smoothing", 0.0), options.get("logit_scale", 1.0),
                           options.get("logit_softcapping"), options.get("lse_square_scale", 0.0),
                           options.get("reduction", "mean")), [logits])


def test_cross_entropy_z_loss_returned_and_row_blocks(monkeypatch):
    """The z-loss returned apart gets its own gradient (2 s lse softmax), and the rows go in
    blocks (ROW_BLOCK logits each; here 4 rows) in the forward and the recomputing backward."""
    import fla.modules.fused_cross_entropy as ce
    monkeypatch.setattr(ce, "ROW_BLOCK", 4 * 30)
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(9, 30, generator=gen) * 3, torch.randint(0, 30, (9,), generator=gen)
    target[5] = -100
    target = target.to(DEVICE)
    loss_fn = modules.FusedCrossEntropyLoss(lse_square_scale=0.1, return_z_loss=True, label_smoothing=0.2)

    def ref(z):
        valid = target != -100
        lse = torch.logsumexp(z, -1)
        z_loss = torch.where(valid, 0.1 * lse.square(), 0.0)
        return ref_ce(z, target, -100, 0.2, 1.0, None, 0.1, "mean"), z_loss.sum() / valid.sum()
    check(lambda z: loss_fn(z, target), ref, [logits])


@pytest.mark.parametrize("options", CE_OPTIONS[:4], ids=[str(o) for o in CE_OPTIONS[:4]])
@pytest.mark.parametrize("num_chunks", [1, 3, "capped"])
def test_fused_linear_cross_entropy(options, num_chunks, monkeypatch):
    """Loss and the gradients of x, weight and bias against cross-entropy on the full logits."""
    gen = torch.Generator().manual_seed(0)
    N, H, V = 21, 8, 40
    x, w, b = torch.randn(N, H, generator=gen), torch.randn(V, H, generator=gen), torch.randn(V, generator=gen)
    target = torch.randint(0, V, (N,), generator=gen)
    target[[0, 7]] = -100
    target = target.to(DEVICE)
    opts = {k: v for k, v in options.items() if k != "lse_square_scale"}
    if num_chunks == "capped":  # the logits cap, not num_chunks, sets the chunks: 16 rows each
        import fla.modules.fused_linear_cross_entropy as flce
        monkeypatch.setattr(flce, "LOGITS_BLOCK", 16 * V)
        num_chunks = 1
    loss_fn = modules.FusedLinearCrossEntropyLoss(num_chunks=num_chunks, **opts)
    check(lambda x, w, b: loss_fn(x, target, w, b),
          lambda x, w, b: ref_ce(F.linear(x, w, b), target, -100, opts.get("label_smoothing", 0.0),
                                 opts.get("logit_scale", 1.0), opts.get("logit_softcapping"), 0.0,
                                 opts.get("reduction", "mean")), [x, w, b])


def test_fused_linear_cross_entropy_l2warp_and_bf16():
    gen = torch.Generator().manual_seed(0)
    N, H, V = 10, 8, 30
    x, w = torch.randn(N, H, generator=gen, requires_grad=True), torch.randn(V, H, generator=gen, requires_grad=True)
    target = torch.randint(0, V, (N,), generator=gen)
    loss = modules.FusedLinearCrossEntropyLoss(use_l2warp=True, l2_penalty_factor=0.5)(x, target, w)
    loss.backward()
    # L2-Warp: the same loss; each row's largest logit gets factor / N times its value as extra gradient
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    z = xr @ wr.t()
    top, ids = z.max(-1)
    extra = torch.zeros_like(z).scatter(-1, ids[:, None], (top * 0.5 / N)[:, None])
    (F.cross_entropy(z, target) + (z * extra.detach()).sum()).backward()
    close("loss", loss.detach(), F.cross_entropy(z, target).detach())
    with torch.no_grad():  # (no gradients made: the same loss)
        close("loss without grad", modules.FusedLinearCrossEntropyLoss()(x, target, w), F.cross_entropy(z, target))
    close("dx", x.grad, xr.grad)
    close("dw", w.grad, wr.grad)
    xb, wb = x.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    modules.FusedLinearCrossEntropyLoss()(xb, target, wb).backward()
    assert xb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="target"):
        modules.FusedLinearCrossEntropyLoss()(x, torch.full((N,), V), w)


def test_fused_kl_div():
    gen = torch.Generator().manual_seed(0)
    N, H, Ht, V = 13, 6, 5, 20
    x, tx = torch.randn(N, H, generator=gen), torch.randn(N, Ht, generator=gen)
    w, tw = torch.randn(V, H, generator=gen), torch.randn(V, Ht, generator=gen)
    tx, tw = tx.to(DEVICE), tw.to(DEVICE)
    for reduction in ("batchmean", "sum"):
        loss_fn = modules.FusedKLDivLoss(reduction=reduction)
        check(lambda x, w: loss_fn(x, tx.float(), w, tw.float()),
              lambda x, w: F.kl_div(F.log_softmax(x @ w.t(), -1), F.log_softmax(tx.double() @ tw.double().t(), -1),
                                    reduction=reduction, log_target=True), [x, w])


def test_losses_refuse_bad_options():
    with pytest.raises(ValueError, match="reduction"):
        modules.FusedCrossEntropyLoss(reduction="avg")
    with pytest.raises(NotImplementedError, match="process_group"):
        modules.FusedLinearCrossEntropyLoss(process_group=object())
    with pytest.raises(ValueError, match="reduction"):
        modules.FusedKLDivLoss(reduction="mean")
    assert math.isfinite(modules.FusedCrossEntropyLoss()(torch.randn(3, 5), torch.full((3,), -100)).item())
