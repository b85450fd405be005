"""The generation cache of FLA's layers, on Hugging Face's ``Cache``: one ``FLALayer`` per layer
holding a dict of states, as FLA 0.6.0 names them: ``recurrent_state`` (the linear-attention
state, in the layer's own layout), ``attn_state`` (softmax attention's key and value tensors
[B, T, ...], grown, or kept to the last ``window_size`` tokens), ``conv_state`` (the short
convolutions' caches) and ``ffn_state``; and the number of tokens each layer has seen."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache as HFCache
from transformers.cache_utils import CacheLayerMixin

STATE_KEYS = ("recurrent_state", "attn_state", "conv_state", "ffn_state")


def _map(value, fn):
    """fn over every tensor in a state (tensors, tuples and lists of them, None)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    return value


class FLALayer(CacheLayerMixin):
    """One layer's states (``state``: a dict with STATE_KEYS) and tokens seen."""

    is_compileable = False
    is_sliding = False

    def __init__(self):
        super().__init__()
        self.state: dict[str, Any] | None = None
        self.seen_tokens = 0
        self.window_size: int | None = None

    def lazy_initialization(self, key_states, value_states=None):
        self.device = key_states.device

    def update(self, *, recurrent_state=None, attn_state=None, conv_state=None, ffn_state=None, offset=1,
               cache_kwargs=None, **_) -> dict[str, Any]:
        """Store the given states (None keeps the old one); ``attn_state`` (keys, values, ...)
        [B, T, ...] is appended to the cached tensors along T (the last ``window_size`` kept, from
        ``cache_kwargs``). Adds the new tokens (attn_state's T, else ``offset``) to the count."""
        window = (cache_kwargs or {}).get("window_size", self.window_size)
        self.window_size, self.is_sliding = window, window is not None
        if self.state is None:
            self.state = dict.fromkeys(STATE_KEYS)
        new_tokens = offset
        if attn_state is not None:
            if not isinstance(attn_state, (tuple, list)):
                raise ValueError("`attn_state` must be a tuple of tensors [B, T, ...]")
            new_tokens = attn_state[0].shape[1]
            old = self.state["attn_state"]
            states = tuple(attn_state) if old is None else tuple(torch.cat([a, b], 1) for a, b in zip(old, attn_state))
            if window is not None:
                states = tuple(s[:, -window:].contiguous() for s in states)
            self.state["attn_state"] = states
        for key, value in (("recurrent_state", recurrent_state), ("conv_state", conv_state),
                           ("ffn_state", ffn_state)):
            if value is not None:
                self.state[key] = value
        self.seen_tokens += int(new_tokens)
        self.is_initialized = True
        return self.state

    def get_seq_length(self, cache_position=None) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(key/value length, offset) of an attention mask for ``query_length`` new tokens."""
        if self.window_size is None:
            return self.seen_tokens + query_length, 0
        return min(self.seen_tokens, self.window_size - 1) + query_length, max(0, self.seen_tokens - self.window_size + 1)

    def reset(self):
        self.state, self.seen_tokens = None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_states(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def _map_states(self, fn):
        if self.state is not None:
            self.state = {k: _map(v, fn) for k, v in self.state.items()}


class FLACache(HFCache):
    """The cache FLA's layers take as ``past_key_values``: ``cache[layer_idx]`` is that layer's
    state dict (recurrent_state, attn_state, conv_state, ffn_state), written by
    ``cache.update(layer_idx=..., offset=<new tokens>, **states)``."""

    is_compileable = False

    def __init__(self, seen_tokens: int = 0, **kwargs):
        if kwargs.get("offloading", False):
            raise NotImplementedError("cache offloading is not supported by flagen's layers")
        super().__init__(layer_class_to_replicate=FLALayer, **kwargs)

    def update(self, recurrent_state=None, attn_state=None, conv_state=None, ffn_state=None, layer_idx: int = 0,
               offset: int | None = 1, cache_kwargs: dict | None = None) -> dict[str, Any]:
        while len(self.layers) <= layer_idx:
            self.layers.append(FLALayer())
        return self.layers[layer_idx].update(recurrent_state=recurrent_state, attn_state=attn_state,
                                             conv_state=conv_state, ffn_state=ffn_state,
                                             offset=1 if offset is None else offset, cache_kwargs=cache_kwargs)

    def __getitem__(self, layer_idx: int) -> dict[str, Any]:
        if layer_idx >= len(self.layers):
            raise KeyError(f"the cache has {len(self.layers)} layers, asked for layer {layer_idx}")
        return self.layers[layer_idx].state

    def __iter__(self):
        return (self[i] for i in range(len(self.layers)))

    def __len__(self) -> int:
        return len(self.layers)

    def get_seq_length(self, layer_idx: int | None = 0, cache_position=None) -> int:
        layer_idx = layer_idx or 0
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def get_max_length(self, layer_idx: int = 0) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        if layer_idx >= len(self.layers):
            return query_length, 0
        return self.layers[layer_idx].get_mask_sizes(query_length)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            layer._map_states(lambda t: t.repeat_interleave(repeats, 0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layers:
            layer._map_states(lambda t: t[indices.to(t.device)])


Cache = FLACache
