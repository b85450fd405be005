"""The configuration every FLA model shares (``FLAConfig``); a family's config adds its own
fields and FLA 0.6.0's defaults as ``defaults``."""

from __future__ import annotations

import copy
from typing import ClassVar

from transformers import PretrainedConfig

# fields of every family, with FLA 0.6.0's defaults (a family's ``defaults`` may override them)
COMMON = dict(hidden_size=2048, num_hidden_layers=24, hidden_ratio=4, intermediate_size=None, hidden_act="swish",
              max_position_embeddings=2048, norm_eps=1e-6, attn=None, initializer_range=0.02, fuse_norm=True,
              fuse_swiglu=True, fuse_cross_entropy=True, fuse_linear_cross_entropy=False, use_l2warp=False,
              vocab_size=32000, attnres_block_size=None)
ATTN_KEYS = ("layers", "num_heads", "num_kv_heads", "qkv_bias", "qk_norm", "window_size", "rope_theta")


class FLAConfig(PretrainedConfig):
    """A model of ``num_hidden_layers`` blocks (norm, token mixer, norm, gated MLP) over
    ``hidden_size``; ``attn`` (a dict: ``layers``, ``num_heads``, ``num_kv_heads``,
    ``window_size``, ``rope_theta``, ``qkv_bias``, ``qk_norm``) puts softmax attention at those
    layer indices (a hybrid). Losses: ``fuse_linear_cross_entropy`` (never the full logits),
    ``fuse_cross_entropy``, or plain."""

    keys_to_ignore_at_inference = ["past_key_values"]
    defaults: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        # a family's config keeps FLAConfig's __init__: transformers would generate a dataclass one
        if "__init__" not in cls.__dict__:
            cls.__init__ = FLAConfig.__init__
        super().__init_subclass__(**kwargs)

    def __init__(self, pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, use_cache=True,
                 **kwargs):
        for name, default in {**COMMON, **self.defaults}.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        self.use_cache = use_cache
        if self.attnres_block_size is not None:
            raise NotImplementedError("`attnres_block_size` (FLA's attention residuals) is not supported")
        if self.attn is not None:
            if not isinstance(self.attn, dict) or "layers" not in self.attn or "num_heads" not in self.attn:
                raise ValueError("`attn` must be a dict with at least `layers` and `num_heads`")
            unknown = set(self.attn) - set(ATTN_KEYS)
            if unknown:
                raise ValueError(f"`attn` has unknown keys {sorted(unknown)}; takes {list(ATTN_KEYS)}")
            bad = [i for i in self.attn["layers"] if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"`attn['layers']` {bad} are not layers of a {self.num_hidden_layers}-layer model")
        if self.fuse_cross_entropy and self.fuse_linear_cross_entropy:
            raise ValueError("`fuse_cross_entropy` and `fuse_linear_cross_entropy` are exclusive")
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
