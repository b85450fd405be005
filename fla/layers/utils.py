"""What every token-mixing layer does around its kernel: padded batches packed to variable-length
sequences and back, and its states read from and written to the generation cache."""

from __future__ import annotations

import torch

from flagen.runtime import packing


def unpad(hidden_states, attention_mask=None, cu_seqlens=None):
    """(x, indices, cu_seqlens): with a 0/1 ``attention_mask`` [B, S] (S >= T, the last T columns
    are the input's; 0 marks padding, left or right), the real tokens of hidden_states [B, T, ...]
    packed to x [1, L, ...] with their flat positions ``indices`` [L] and ``cu_seqlens`` [B + 1];
    otherwise the input as it is (packed already when ``cu_seqlens`` is given) and indices None."""
    if attention_mask is None:
        return hidden_states, None, cu_seqlens
    if cu_seqlens is not None:
        raise ValueError("give either `attention_mask` (a padded batch) or `cu_seqlens` (a packed one), not both")
    B, T = hidden_states.shape[:2]
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
        raise ValueError(f"`attention_mask` must be a 0/1 padding mask [batch, >= seq_len] = [{B}, >= {T}], got "
                         f"{list(attention_mask.shape)} (4D attention masks are not taken)")
    indices, cu = packing.per_tensor(attention_mask, ("unpad", T), lambda: _packing(attention_mask, T),
                                     device_tensors=True)  # (once per mask: every layer gets the same)
    return hidden_states.flatten(0, 1).index_select(0, indices)[None], indices, cu


def _packing(attention_mask, T):
    """(indices [L], cu_seqlens [B + 1]) of the real tokens among the last T columns of the mask."""
    mask = attention_mask[:, -T:].bool()
    indices = mask.flatten().nonzero().flatten()  # (a device sync)
    cu = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=mask.device)
    cu[1:] = mask.sum(-1, dtype=torch.int32).cumsum(0)
    return indices, cu


def repad(x, indices, batch_size, seq_len):
    """The inverse of unpad: x [1, L, ...] back to [batch_size, seq_len, ...], zeros at padding
    (x itself when indices is None)."""
    if indices is None:
        return x
    out = x.new_zeros(batch_size * seq_len, *x.shape[2:])
    return out.index_copy(0, indices, x[0]).view(batch_size, seq_len, *x.shape[2:])


def layer_state(layer, past_key_values):
    """The layer's state dict in the cache (None before its first update, or without a cache)."""
    if past_key_values is None:
        return None
    if getattr(layer, "layer_idx", None) is None:
        raise ValueError(f"{type(layer).__name__} needs a `layer_idx` to use `past_key_values`")
    return past_key_values[layer.layer_idx] if len(past_key_values) > layer.layer_idx else None


def store_state(layer, past_key_values, **states):
    """Write the layer's new states (and the number of new tokens, ``offset``) to the cache."""
    if past_key_values is not None:
        layer_state(layer, past_key_values)  # (checks layer_idx)
        past_key_values.update(layer_idx=layer.layer_idx, **states)


def padding_offsets(attention_mask, seen, seq_len):
    """Each sequence's real tokens before this call, for the positions of a layer that packs
    away padding: the ``seen`` cached tokens less the padding among them (``attention_mask``
    [B, S]'s first S - seq_len columns). ``seen`` (an int) without a mask."""
    if attention_mask is None or seen == 0:
        return seen
    return seen - (attention_mask[:, :attention_mask.shape[-1] - seq_len] == 0).sum(-1)
