"""Decoding steps replayed from CUDA graphs: ``model.generate(..., use_cuda_graph=True)``.

A linear-attention model's decoding state has a fixed size (recurrent states, conv states), so
one step (embedding, every block, the LM head) can be captured once per batch size and replayed:
no kernel launches from Python, no host work per layer. The captured step reads the cache's
states from fixed tensors and writes the new ones back into them (inside the graph), so the
cache always holds those tensors; a cache whose tensors are others (a new ``generate`` call,
beam search's reordering) is copied into them first. Each sequence's position (its real tokens
so far: left padding excluded) is handed to the layers as ``position_ids`` [B, 1] from a tensor
the step reads, for RetNet's rotary angles. Softmax attention's KV cache grows every step, so
models with attention layers are refused. GPU only."""

from __future__ import annotations

import torch

from fla.layers import Attention
from fla.models.cache_utils import STATE_KEYS


def _leaves(value):
    """The tensors of one state entry (a tensor, a tuple or list of them, or None), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _leaves(v)]
    return []


def _rebuild(value, leaves):
    """``value``'s structure with its tensors taken, in order, from the iterator ``leaves``."""
    if isinstance(value, torch.Tensor):
        return next(leaves)
    if isinstance(value, (tuple, list)):
        return type(value)(_rebuild(v, leaves) for v in value)
    return value


def _states(cache):
    """[(layer, key, tensors)] of every state the cache holds, in a fixed order."""
    return [(i, key, _leaves(layer.state[key])) for i, layer in enumerate(cache.layers) if layer.state is not None
            for key in STATE_KEYS if layer.state[key] is not None]


def _signature(cache):
    return tuple((i, key, tuple((tuple(t.shape), t.dtype) for t in ts)) for i, key, ts in _states(cache))


class _Step:
    """One captured decoding step for one batch size and cache layout."""

    def __init__(self, model, input_ids, positions, cache):
        self.ids, self.positions = input_ids.clone(), positions.clone()
        self.inputs = [t for _, _, ts in _states(cache) for t in ts]  # the tensors the graph reads and writes
        saved = [t.clone() for t in self.inputs]
        seen = [layer.seen_tokens for layer in cache.layers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile every kernel before capture (this step's states are restored)
            self._forward(model, cache)
        torch.cuda.current_stream().wait_stream(side)
        self._bind(cache)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward(model, cache)
        self._bind(cache)
        for t, s in zip(self.inputs, saved):
            t.copy_(s)
        for layer, n in zip(cache.layers, seen):
            layer.seen_tokens = n

    def _forward(self, model, cache):
        """The step on ``self.ids``: logits [B, 1, vocab]; the new states copied into ``self.inputs``."""
        hidden = model.base_model(input_ids=self.ids, past_key_values=cache, use_cache=True,
                                  position_ids=self.positions).last_hidden_state
        logits = model.lm_head(hidden)
        for t, new in zip(self.inputs, [t for _, _, ts in _states(cache) for t in ts]):
            if new.data_ptr() != t.data_ptr():  # (a layer that updated its state in place wrote it already)
                t.copy_(new)
        return logits

    def _bind(self, cache):
        """Point the cache at ``self.inputs`` (copying its own tensors into them if it holds others)."""
        leaves = iter(self.inputs)
        for i, key, ts in _states(cache):
            mine = [next(leaves) for _ in ts]
            for t, m in zip(ts, mine):
                if t is not m:
                    m.copy_(t)
            state = cache.layers[i].state
            state[key] = _rebuild(state[key], iter(mine))

    def __call__(self, input_ids, positions, cache):
        self._bind(cache)
        self.ids.copy_(input_ids)
        self.positions.copy_(positions)
        self.graph.replay()
        for layer in cache.layers:
            layer.seen_tokens += 1
        return self.logits.clone()  # (the next replay overwrites the graph's own)


class DecodingGraphs:
    """The captured steps of one model, by batch size and cache layout."""

    def __init__(self, model):
        attention = [n for n, m in model.named_modules() if isinstance(m, Attention)]
        if attention:
            raise ValueError(f"`use_cuda_graph`: {type(model).__name__} has softmax attention layers ({attention[0]}, "
                             "...) whose KV cache grows every step; generate without CUDA graphs")
        self.steps: dict = {}

    def __call__(self, model, input_ids, cache, attention_mask=None):
        """logits [B, 1, vocab] of one token per sequence, input_ids [B, 1] (``attention_mask``
        [B, S] 0/1, its last column the new token's), the cache advanced."""
        if input_ids.device.type != "cuda":
            raise ValueError(f"`use_cuda_graph` needs the model on a CUDA GPU, got {input_ids.device}")
        if attention_mask is not None:
            positions = attention_mask[:, :-1].sum(-1, keepdim=True)
        else:
            positions = torch.full_like(input_ids, cache.get_seq_length())
        key = (input_ids.shape[0], _signature(cache))
        step = self.steps.get(key)
        if step is None:
            step = self.steps[key] = _Step(model, input_ids, positions, cache)
        return step(input_ids, positions, cache)
