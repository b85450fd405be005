"""flagen.runtime.packing: a packed batch's cu_seqlens read back once per tensor (a model's
layers share it), read again when changed in place, and the index tensors derived from the
lengths built once; results equal to fresh reads throughout."""

from __future__ import annotations

import pytest
import torch

from flagen.runtime import packing
from flagen.runtime.op import get_op
from recurrent_cases import DEVICE


def _inputs(T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, T, 2, 16, generator=gen).to(DEVICE) for _ in range(2))
    v = torch.randn(1, T, 2, 8, generator=gen).to(DEVICE)
    g = (-torch.rand(1, T, 2, generator=gen)).to(DEVICE)
    return q, k, v, g


@pytest.fixture
def reads(monkeypatch):
    """The cu_seqlens tensors read back to the host, in order."""
    seen = []
    read = packing._read

    def counting(cu):
        seen.append(cu)
        return read(cu)
    monkeypatch.setattr(packing, "_read", counting)
    return seen


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_one_read_per_cu_seqlens(mode, reads):
    """Calls sharing one cu_seqlens tensor read it once; another tensor with other lengths is
    read and indexed on its own, and the first one's results do not change in between."""
    op = get_op("simple_gla")
    run = op.chunk if mode == "chunk" else op
    q, k, v, g = _inputs(40)
    cu = torch.tensor([0, 7, 7, 40], device=DEVICE)
    other = torch.tensor([0, 30, 40], device=DEVICE)
    first = run(q, k, v, g=g, cu_seqlens=cu, output_final_state=True)
    again = run(q, k, v, g=g, cu_seqlens=cu, output_final_state=True)
    between = run(q, k, v, g=g, cu_seqlens=other, output_final_state=True)
    last = run(q, k, v, g=g, cu_seqlens=cu, output_final_state=True)
    assert [id(x) for x in reads] == [id(cu), id(other)]
    for a, b in ((first, again), (first, last)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    alone = run(q[:, 7:], k[:, 7:], v[:, 7:], g=g[:, 7:], output_final_state=True)
    assert torch.allclose(between[0][:, 30:], run(q[:, 30:], k[:, 30:], v[:, 30:], g=g[:, 30:])[0], atol=1e-5)
    assert torch.allclose(first[0][:, 7:], alone[0], atol=1e-5)


def test_changed_in_place_is_read_and_checked_again(reads):
    op = get_op("simple_gla")
    q, k, v, g = _inputs(12)
    cu = torch.tensor([0, 5, 12], device=DEVICE)
    op(q, k, v, g=g, cu_seqlens=cu)
    cu[-1] = 13
    with pytest.raises(ValueError, match="must end at the packed length T=12"):
        op(q, k, v, g=g, cu_seqlens=cu)
    cu[1], cu[-1] = 9, 12
    o = op(q, k, v, g=g, cu_seqlens=cu)[0]
    assert len(reads) == 3
    assert torch.allclose(o[:, 9:], op(q[:, 9:], k[:, 9:], v[:, 9:], g=g[:, 9:])[0], atol=1e-5)


def test_inference_mode_tensors_are_read_each_time(reads):
    op = get_op("simple_gla")
    q, k, v, g = _inputs(12)
    with torch.inference_mode():
        cu = torch.tensor([0, 5, 12], device=DEVICE)
        a = op(q, k, v, g=g, cu_seqlens=cu)[0]
        b = op(q, k, v, g=g, cu_seqlens=cu)[0]
    assert len(reads) == 2 and torch.equal(a, b)


def test_entries_are_bounded():
    """At most MAX_ENTRIES tensors and index layouts are kept, the oldest dropped first."""
    tensors = [torch.tensor([0, i + 1]) for i in range(packing.MAX_ENTRIES + 5)]
    for cu in tensors:
        packing.host_offsets(cu)
    assert len(packing._per_tensor) <= packing.MAX_ENTRIES
    assert (id(tensors[0]), "offsets") not in packing._per_tensor
    assert (id(tensors[-1]), "offsets") in packing._per_tensor
    for i in range(packing.MAX_ENTRIES + 5):
        packing.device_indices(("test", i), lambda: i)
    assert len(packing._indices) <= packing.MAX_ENTRIES and ("test", 0) not in packing._indices


def test_a_padding_mask_is_packed_once_per_forward(monkeypatch):
    """Every layer of a model gets the same attention_mask: it is packed (a nonzero, a sync)
    once per forward, and its cu_seqlens read back once; the logits equal a fresh packing's."""
    from test_models import make

    import fla.layers.utils as utils
    calls = []
    pack = utils._packing
    monkeypatch.setattr(utils, "_packing", lambda mask, T: calls.append(T) or pack(mask, T))
    model = make("gla", num_hidden_layers=3)
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones(2, 9, dtype=torch.long, device=DEVICE)
    mask[1, :4] = 0
    with torch.no_grad():
        a = model(ids, attention_mask=mask).logits
        assert calls == [9]
        b = model(ids, attention_mask=mask.clone()).logits  # another tensor: packed again
    assert calls == [9, 9] and torch.equal(a, b)


def test_conv_token_bounds_once_per_cu_seqlens(monkeypatch):
    """The convolution's Triton path derives a packed batch's token bounds once per cu_seqlens
    tensor, int32 as FLA passes it included (not once per converted copy), and equal lengths
    need none; an empty sequence length T = 0 runs too."""
    import fla.modules.causal_conv as causal_conv
    from fla.modules.convolution import causal_conv1d
    monkeypatch.setattr(causal_conv, "usable", lambda x, h0: x.numel() > 0)
    built = []
    token_bounds = causal_conv.token_bounds
    monkeypatch.setattr(causal_conv, "token_bounds", lambda *a, **k: built.append(a) or token_bounds(*a, **k))
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 12, 6, generator=gen).to(DEVICE), torch.randn(6, 4, generator=gen).to(DEVICE)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32, device=DEVICE)
    first = causal_conv1d(x, w, cu_seqlens=cu)[0]
    bounds = token_bounds(cu, 12, x.device)
    assert causal_conv1d(x, w, cu_seqlens=cu)[0].equal(first)
    assert all(a is b for a, b in zip(token_bounds(cu, 12, x.device), bounds))  # kept, not rebuilt
    built.clear()
    causal_conv1d(x.reshape(2, 6, 6), w)  # equal lengths: bounds in the kernel
    assert built == []
    y, final = causal_conv1d(x[:, :0].expand(2, 0, 6), w, output_final_state=True)
    assert y.shape == (2, 0, 6) and final.shape == (2, 6, 4) and not final.any()
