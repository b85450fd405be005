"""fla.layers: each layer's layout against FLA 0.6.0's record (constructor and forward
signatures, parameter and buffer names, shapes and dtypes, submodules, attributes), its chunked
mode against its recurrent mode (output and every parameter gradient), token-by-token decoding
through the cache against one full forward, left-padded batches against each sequence alone,
and packed variable-length input.

Tolerance: fp32 (the interpreter on the CPU, bf16 on the GPU run), TOL of tests/recurrent_cases.py
relative to the reference's largest magnitude.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path

import pytest
import torch

import fla.layers as layers
from fla.models import Cache
from recurrent_cases import DEVICE, DTYPE, TOL
from test_user_variant import SPECS as USER_SPECS

RECORDS = json.loads((Path(__file__).parent / "records" / "fla060_layouts.json").read_text())["layers"]
OURS = [name for name in RECORDS if hasattr(layers, name)]
# a small configuration of each layer for the numerical tests (two heads, GQA where offered):
# (class, arguments); RecurrentLayer with a built-in and with the user variants of examples/
SMALL = {
    "GatedLinearAttention": ("GatedLinearAttention", dict(hidden_size=32, num_heads=2, num_kv_heads=1, expand_k=1.0,
                                                          use_short_conv=True, conv_bias=True)),
    "MultiScaleRetention": ("MultiScaleRetention", dict(hidden_size=32, num_heads=2, expand_k=1.0, expand_v=1.0,
                                                        use_short_conv=True)),
    "HGRN2Attention": ("HGRN2Attention", dict(hidden_size=32, num_heads=2, expand_ratio=None, use_short_conv=True)),
    "LinearAttention": ("LinearAttention", dict(hidden_size=32, num_heads=2, num_kv_heads=1)),
    "LinearAttention[hedgehog_normalized]": ("LinearAttention", dict(hidden_size=32, num_heads=2, expand_k=0.5,
                                                                     feature_map="hedgehog", do_feature_map_norm=True,
                                                                     norm_q=True, norm_k=True)),
    "DeltaNet": ("DeltaNet", dict(hidden_size=32, num_heads=2, use_gate=True)),
    "DeltaNet[sum_relu]": ("DeltaNet", dict(hidden_size=32, num_heads=2, qk_norm="sum", qk_activation="relu",
                                            allow_neg_eigval=True, use_short_conv=False)),
    "GatedDeltaNet": ("GatedDeltaNet", dict(hidden_size=32, head_dim=16, num_heads=1, num_v_heads=2, expand_v=1)),
    "KimiDeltaAttention": ("KimiDeltaAttention", dict(hidden_size=32, head_dim=16, num_heads=1, num_v_heads=2)),
    "KimiDeltaAttention[lower_bound]": ("KimiDeltaAttention", dict(hidden_size=32, head_dim=16, num_heads=2,
                                                                   safe_gate=True, lower_bound=-5.0,
                                                                   use_short_conv=False)),
    "RWKV6Attention": ("RWKV6Attention", dict(hidden_size=32, num_heads=2, proj_low_rank_dim=4, gate_low_rank_dim=8)),
    "Mamba2": ("Mamba2", dict(hidden_size=32, num_heads=4, head_dim=16, state_size=8, n_groups=2)),
    "Mamba2[no_norm]": ("Mamba2", dict(hidden_size=32, num_heads=2, head_dim=32, state_size=8, D_has_hdim=True,
                                       rmsnorm=False, use_bias=True, dt_limit=(0.0, 0.05))),
    "RWKV7Attention": ("RWKV7Attention", dict(hidden_size=32, head_dim=16, decay_low_rank_dim=8,
                                              gate_low_rank_dim=8, a_low_rank_dim=8, v_low_rank_dim=8,
                                              num_hidden_layers=2)),
    "Attention": ("Attention", dict(hidden_size=32, num_heads=4, num_kv_heads=2, qk_norm=True, qkv_bias=True)),
    "Attention[window]": ("Attention", dict(hidden_size=32, num_heads=2, window_size=5)),
    "RecurrentLayer[simple_gla]": ("RecurrentLayer", dict(spec="simple_gla", hidden_size=32, num_heads=2,
                                                          use_short_conv=True)),
}
# user variants (delta rules: token by token on this revision) in the decoding and padding tests
VARIANTS = {f"RecurrentLayer[{v.name}]": ("RecurrentLayer", dict(spec=v, hidden_size=32, num_heads=2,
                                                                 mode="fused_recurrent", use_short_conv=True))
            for v in USER_SPECS.values()}


def _signature(fn):
    return [(p.name, repr(p.default) if p.default is not p.empty else None)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def _recorded(sig):
    return [(p["name"], p.get("default")) for p in sig["params"]]


@pytest.mark.parametrize("name", OURS)
def test_layer_layout_matches_fla(name):
    """Same constructor and forward signatures, and for every recorded configuration the same
    parameter and buffer names, shapes and dtypes (so FLA checkpoints load), submodules and
    attributes (registration order aside: state_dict loading does not depend on it)."""
    rec = RECORDS[name]
    cls = getattr(layers, name)
    assert _signature(cls.__init__) == _recorded(rec["init"])
    assert _signature(cls.forward) == _recorded(rec["forward"])
    for entry in rec["configs"]:
        if "error" in entry:  # FLA could not build it (recorded with its error): nothing to compare
            continue
        layer = cls(**entry["config"])
        params = sorted([n, list(p.shape), str(p.dtype).replace("torch.", "")] for n, p in layer.named_parameters())
        assert params == sorted(p[:3] for p in entry["parameters"]), entry["config"]
        sd = set(layer.state_dict())
        buffers = sorted([n, list(b.shape), str(b.dtype).replace("torch.", ""), n in sd]
                         for n, b in layer.named_buffers())
        assert buffers == sorted(entry["buffers"]), entry["config"]
        assert sorted([n, type(m).__name__] for n, m in layer.named_modules() if n) == sorted(entry["modules"])
        for attr, value in entry["attrs"].items():
            ours = getattr(layer, attr)
            if callable(ours) and value is None:
                continue
            ours = [x if not isinstance(x, float) or math.isfinite(x) else repr(x) for x in ours] \
                if isinstance(ours, tuple) else ours  # (the record writes inf as 'inf')
            assert ours == value, f"{entry['config']}: {attr}"


def make(name, dtype=DTYPE, **overrides):
    torch.manual_seed(0)
    cls, kwargs = {**SMALL, **VARIANTS}[name]
    layer = getattr(layers, cls)(**{**kwargs, "layer_idx": 0, **overrides})
    for p in layer.parameters():  # away from the init values (norm weights of 1, zero biases)
        p.data += 0.1 * torch.randn_like(p)
    layer = layer.to(DEVICE, dtype)  # (the same values in every dtype it is made in)
    return layer


def close(name, ours, ref, tol=TOL):
    err = (ours.double() - ref.double()).abs().max().item()
    bound = tol * (ref.double().abs().max().item() + 0.05)
    assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"


def inputs(B, T, hidden=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, hidden, generator=gen).to(DEVICE, DTYPE)


@pytest.mark.parametrize("dtype", sorted({torch.float32, DTYPE}, key=str))
@pytest.mark.parametrize("name", [n for n in SMALL if not n.startswith(("Attention", "Mamba2"))])
def test_chunked_equals_recurrent(name, dtype):
    """T = 80 (past the 64 tokens below which the layers go token by token): the chunked mode and
    the recurrent mode give the same output and, in fp32, the same gradient of every parameter,
    within TOL (on the GPU, fp32 matmuls are tf32: the op tests hold fp32 to the same TOL there).
    In bf16 (the GPU run) the outputs only: a parameter's gradient is then a bf16 sum over every
    token, and two bf16 computations of it differ by up to twice what each differs from the
    truth; the kernels' bf16 gradients are checked against float64 op by op
    (tests/test_chunk_ops.py, tests/test_recurrent_ops.py)."""
    chunked, recurrent = make(name, dtype, mode="chunk"), make(name, dtype, mode="fused_recurrent")
    x = inputs(2, 80).to(dtype)
    outs, grads = [], []
    for layer in (chunked, recurrent):
        if name.startswith(("MultiScaleRetention", "LinearAttention", "GatedDeltaNet", "KimiDelta")) and layer is recurrent:
            with torch.no_grad():  # (these train chunked; their recurrent mode is for inference)
                outs.append(layer(x)[0])
            continue
        o = layer(x)[0]
        outs.append(o.detach())
        o.float().square().sum().backward()
        grads.append({n: p.grad for n, p in layer.named_parameters()})
    close("o", outs[0], outs[1])
    if len(grads) == 2 and dtype == torch.float32:
        for n in grads[0]:
            close(f"grad {n}", grads[0][n], grads[1][n])


@pytest.mark.parametrize("name", [*SMALL, *VARIANTS])
def test_decoding_equals_full_forward(name):
    """A 70-token prefill (chunked) then 5 tokens one at a time through the cache (recurrent
    state and conv states) give the full forward's outputs."""
    layer = make(name)
    x = inputs(2, 75)
    with torch.no_grad():
        full = layer(x)[0]
        cache = Cache()
        outs = [layer(x[:, :70], past_key_values=cache, use_cache=True)[0]]
        for t in range(70, 75):
            outs.append(layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
    close("decoded", torch.cat(outs, 1), full)
    assert cache.get_seq_length(0) == 75


@pytest.mark.parametrize("name", [*SMALL, *VARIANTS])
def test_left_padding_equals_each_sequence_alone(name):
    """A left-padded batch (prefill and two decoding steps, as generate() feeds it) gives each
    sequence's own outputs; padded positions give 0."""
    layer = make(name)
    lens, T = [9, 6], 9
    seqs = [inputs(1, n + 2, seed=i) for i, n in enumerate(lens)]
    with torch.no_grad():
        alone = [layer(s)[0] for s in seqs]
        x = torch.zeros(2, T, 32, device=DEVICE, dtype=DTYPE)
        mask = torch.zeros(2, T, dtype=torch.long, device=DEVICE)
        for i, n in enumerate(lens):
            x[i, T - n:], mask[i, T - n:] = seqs[i][0, :n], 1
        cache = Cache()
        o = layer(x, attention_mask=mask, past_key_values=cache, use_cache=True)[0]
        steps = []
        for t in range(2):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long, device=DEVICE)], 1)
            step = torch.stack([s[0, n + t] for s, n in zip(seqs, lens)])[:, None]
            steps.append(layer(step, attention_mask=mask, past_key_values=cache, use_cache=True)[0])
    for i, n in enumerate(lens):
        close(f"sequence {i}", o[i, T - n:], alone[i][0, :n])
        close(f"sequence {i} decoded", torch.cat([s[i] for s in steps]), alone[i][0, n:])
        assert not o[i, :T - n].any(), "padding gives 0"


@pytest.mark.parametrize("name", list(SMALL))
def test_packed_varlen_equals_each_sequence_alone(name):
    layer = make(name)
    seqs = [inputs(1, n, seed=i) for i, n in enumerate([5, 70, 1])]
    cu = torch.tensor([0, 5, 75, 76], dtype=torch.int32, device=DEVICE)
    with torch.no_grad():
        packed = layer(torch.cat(seqs, 1), cu_seqlens=cu)[0]
        for i, s in enumerate(seqs):
            close(f"sequence {i}", packed[:, cu[i]:cu[i + 1]], layer(s)[0])


@pytest.mark.parametrize("window", [None, 3])
def test_attention_against_formula(window):
    """Causal softmax attention with rotary q and k, grouped heads and a window, against
    softmax(q k^T / sqrt(d) + mask) v in float64 from the layer's own projections."""
    layer = make("Attention", window_size=window)
    x = inputs(2, 11)
    with torch.no_grad():
        o = layer(x)[0]
        q = layer.q_norm(layer.q_proj(x).unflatten(-1, (4, 8)))
        k = layer.k_norm(layer.k_proj(x).unflatten(-1, (2, 8)))
        v = layer.v_proj(x).unflatten(-1, (2, 8))
        q, k = layer.rotary(q, k)
        q, k, v = q.double(), k.double().repeat_interleave(2, 2), v.double().repeat_interleave(2, 2)
        s = torch.einsum("bihd,bjhd->bhij", q, k) / 8 ** 0.5
        i, j = torch.arange(11)[:, None], torch.arange(11)[None]
        allowed = (j <= i) & ((i - j < window) if window else True)
        ref = torch.einsum("bhij,bjhd->bihd", s.masked_fill(~allowed.to(DEVICE), float("-inf")).softmax(-1), v)
        ref = layer.o_proj.weight.double() @ ref.flatten(2).unsqueeze(-1)
    close("o", o, ref.squeeze(-1))


@pytest.mark.parametrize("name", ["Mamba2", "Mamba2[no_norm]"])
def test_mamba2_against_scan(name):
    """T = 80 (chunked) against Mamba2's recurrence token by token in float64 from the layer's
    parameters: conv, h_t = exp(dt_t A) h_(t-1) + dt_t B_t x_t^T, y_t = C_t h_t + D x_t, the gate."""
    layer = make(name)
    x = inputs(1, 80)
    with torch.no_grad():
        o = layer(x)[0]
        P = {n: p.double() for n, p in layer.named_parameters()}
        H, Pd, N, G = layer.num_heads, layer.head_dim, layer.ssm_state_size, layer.n_groups
        I = layer.intermediate_size
        proj = x.double() @ P["in_proj.weight"].t() + (P["in_proj.bias"] if layer.use_bias else 0)
        z, xbc, dt = proj.split([I, layer.conv_dim, H], -1)
        xbc = torch.nn.functional.conv1d(xbc.transpose(1, 2), P["conv1d.weight"], P.get("conv1d.bias"),
                                         padding=layer.conv_kernel_size - 1, groups=layer.conv_dim)[..., :80]
        xs, Bc, Cc = torch.nn.functional.silu(xbc.transpose(1, 2)).split([I, G * N, G * N], -1)
        dt = torch.nn.functional.softplus(dt + P["dt_bias"]).clamp(*layer.dt_limit)
        A = -P["A_log"].exp()
        D = P["D"].view(H, Pd) if layer.D_has_hdim else P["D"][:, None].expand(H, Pd)
        h = torch.zeros(H, Pd, N, dtype=torch.float64, device=x.device)
        ys = []
        for t in range(80):
            xt = xs[0, t].view(H, Pd)
            Bt = Bc[0, t].view(G, N).repeat_interleave(H // G, 0)
            Ct = Cc[0, t].view(G, N).repeat_interleave(H // G, 0)
            h = torch.exp(dt[0, t] * A)[:, None, None] * h + dt[0, t][:, None, None] * xt[..., None] * Bt[:, None]
            ys.append(((h @ Ct[..., None])[..., 0] + D * xt).flatten())
        y = torch.stack(ys)[None]
        if layer.rmsnorm:
            s = (y * torch.nn.functional.silu(z)).view(1, 80, G, -1)
            y = (s / torch.sqrt(s.square().mean(-1, keepdim=True) + layer.norm_eps)).flatten(2) * P["norm.weight"]
        else:
            y = y * torch.nn.functional.silu(z)
        ref = y @ P["out_proj.weight"].t() + (P["out_proj.bias"] if layer.use_bias else 0)
    close("o", o, ref)


def test_rwkv7_value_residual_stack():
    """Layers 0 and 1 of RWKV-7 (layer 1 mixing in layer 0's values, v_first): a left-padded
    batch decoded through the cache equals each sequence's full forward."""
    torch.manual_seed(0)
    kw = dict(hidden_size=32, head_dim=16, decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8,
              v_low_rank_dim=8, num_hidden_layers=2, value_dim=64, fuse_norm=True)
    stack = [layers.RWKV7Attention(layer_idx=i, **kw).to(DEVICE, DTYPE) for i in range(2)]
    for p in (p for layer in stack for p in layer.parameters()):
        p.data += 0.1 * torch.randn_like(p)

    def run(x, **call):
        o0, _, _, v_first = stack[0](x, **call)
        return stack[1](o0 + x, v_first=v_first, **call)[0]

    lens, T = [7, 4], 7
    seqs = [inputs(1, n + 2, seed=i) for i, n in enumerate(lens)]
    with torch.no_grad():
        alone = [run(s) for s in seqs]
        x = torch.zeros(2, T, 32, device=DEVICE, dtype=DTYPE)
        mask = torch.zeros(2, T, dtype=torch.long, device=DEVICE)
        for i, n in enumerate(lens):
            x[i, T - n:], mask[i, T - n:] = seqs[i][0, :n], 1
        cache = Cache()
        o = run(x, attention_mask=mask, past_key_values=cache, use_cache=True)
        steps = []
        for t in range(2):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long, device=DEVICE)], 1)
            step = torch.stack([s[0, n + t] for s, n in zip(seqs, lens)])[:, None]
            steps.append(run(step, attention_mask=mask, past_key_values=cache, use_cache=True))
    for i, n in enumerate(lens):
        close(f"sequence {i}", o[i, T - n:], alone[i][0, :n])
        close(f"sequence {i} decoded", torch.cat([s[i] for s in steps]), alone[i][0, n:])
    with pytest.raises(ValueError, match="v_first"):
        stack[1](x)


def test_hgrn2_lower_bound():
    """The forget gate floored at lower_bound: log(lb + (1 - lb) f); lb = 0 changes nothing, and
    layer 0 takes none."""
    layer = make("HGRN2Attention", layer_idx=1)
    x = inputs(1, 10)
    with torch.no_grad():
        plain = layer(x)[0]
        close("lb = 0", layer(x, lower_bound=torch.zeros(32, device=DEVICE))[0], plain)
        floored = layer(x, lower_bound=torch.full((32,), 0.9, device=DEVICE))[0]
        assert (floored - plain).abs().max() > 1e-3
        layer.layer_idx = 0
        close("layer 0", layer(x, lower_bound=torch.full((32,), 0.9, device=DEVICE))[0], plain)


def test_layers_refuse_bad_input():
    with pytest.raises(ValueError, match="num_kv_heads"):
        layers.GatedLinearAttention(hidden_size=32, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="mode"):
        layers.MultiScaleRetention(hidden_size=32, num_heads=2, mode="fast")
    layer = copy.deepcopy(make("GatedLinearAttention"))
    layer.layer_idx = None
    with pytest.raises(ValueError, match="layer_idx"):
        layer(inputs(1, 3), past_key_values=Cache(), use_cache=True)
    with pytest.raises(ValueError, match="attention_mask"):
        make("GatedLinearAttention")(inputs(1, 3), attention_mask=torch.ones(1, 1, 3, 3, device=DEVICE))
