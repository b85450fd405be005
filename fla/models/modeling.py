"""The model stack every FLA family shares: a block (norm, token mixer, norm, gated MLP), the
model (embeddings, blocks, final norm) and the causal LM (head, shifted-label loss, generation).
A family (fla.models.<family>) is its config and the token mixer its blocks build."""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from fla.layers import Attention
from fla.models.cache_utils import Cache
from fla.models.cuda_graph import DecodingGraphs
from fla.modules import FusedCrossEntropyLoss, FusedLinearCrossEntropyLoss, GatedMLP, RMSNorm, RotaryEmbedding


def _output(cls, cache, **fields):
    """``cls`` (a transformers output) with the cache under its field's name: ``cache`` in newer
    transformers, ``past_key_values`` before."""
    name = "cache" if "cache" in cls.__dataclass_fields__ else "past_key_values"
    return cls(**fields, **{name: cache})


def _cache_argument(past_key_values, kwargs):
    """The cache a caller passed, as ``cache`` (newer transformers) or ``past_key_values``."""
    cache = kwargs.pop("cache", None)
    return cache if cache is not None else past_key_values


def hybrid_attention(config, layer_idx):
    """Softmax attention for layer ``layer_idx`` if config.attn puts it there (a hybrid), else None."""
    attn = config.attn
    if attn is None or layer_idx not in attn["layers"]:
        return None
    return Attention(hidden_size=config.hidden_size, num_heads=attn["num_heads"], num_kv_heads=attn.get("num_kv_heads"),
                     qkv_bias=attn.get("qkv_bias", False), qk_norm=attn.get("qk_norm", False),
                     window_size=attn.get("window_size"), rope_theta=attn.get("rope_theta", 10000.0),
                     max_position_embeddings=config.max_position_embeddings, layer_idx=layer_idx)


class FLABlock(nn.Module):
    """attn_norm -> attn (the family's mixer, or Attention at config.attn's layers) -> mlp_norm
    (with the residual added in) -> mlp, residuals around both."""

    @staticmethod
    def mixer(config, layer_idx):
        """The family's token mixer for layer ``layer_idx`` (a subclass says which)."""
        raise NotImplementedError

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        norm = RMSNorm if config.fuse_norm else nn.RMSNorm
        self.attn_norm = norm(config.hidden_size, eps=config.norm_eps)
        self.attn = hybrid_attention(config, layer_idx) or self.mixer(config, layer_idx)
        self.mlp_norm = norm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GatedMLP(config.hidden_size, config.hidden_ratio, config.intermediate_size, config.hidden_act,
                            config.fuse_swiglu)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                output_attentions=False, **kwargs):
        residual = hidden_states
        out = self.attn(self.attn_norm(hidden_states), attention_mask=attention_mask,
                        past_key_values=past_key_values, use_cache=use_cache, output_attentions=output_attentions,
                        **kwargs)
        hidden_states = residual + out[0]
        hidden_states = hidden_states + self.mlp(self.mlp_norm(hidden_states))
        return (hidden_states, out[1], past_key_values)


class FLAPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_cache_class = True
    _skip_keys_device_placement = ["cache"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RotaryEmbedding):
            module.reset_parameters()


class FLAModel(FLAPreTrainedModel):
    """embeddings -> blocks -> norm. forward(input_ids or inputs_embeds [B, T], attention_mask
    [B, S] 0/1 (left padding for generation), past_key_values (fla.models.Cache), use_cache)."""

    block_class = FLABlock
    final_norm_name = "norm"  # (Mamba2's is norm_f)

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([self.block_class(config, i) for i in range(config.num_hidden_layers)])
        setattr(self, self.final_norm_name, self.make_final_norm(config))
        self.gradient_checkpointing = False
        self.post_init()

    @staticmethod
    def make_final_norm(config):
        """The norm after the last block (RMSNorm; RWKV's is a LayerNorm)."""
        return (RMSNorm if config.fuse_norm else nn.RMSNorm)(config.hidden_size, eps=config.norm_eps)

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    def layer_kwargs(self, layer_idx: int) -> dict:
        """Extra arguments of block ``layer_idx`` (a family's per-layer inputs)."""
        return {}

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        past_key_values = _cache_argument(past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of `input_ids` and `inputs_embeds`")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_hidden_states = bool(output_hidden_states)
        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = Cache()
        all_hidden = () if output_hidden_states else None
        carry = {}  # what a block hands to the ones after it (RWKV-7's v_first)
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden += (hidden_states,)
            out = layer(hidden_states, attention_mask=attention_mask, past_key_values=past_key_values,
                        use_cache=use_cache, **self.layer_kwargs(i), **carry, **kwargs)
            hidden_states, past_key_values = out[0], out[2]
            if len(out) > 3 and out[3] is not None:
                carry["v_first"] = out[3]
        hidden_states = getattr(self, self.final_norm_name)(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return _output(BaseModelOutputWithPast, past_key_values, last_hidden_state=hidden_states,
                       hidden_states=all_hidden, attentions=None)


class FLAForCausalLM(FLAPreTrainedModel, GenerationMixin):
    """model -> lm_head, the loss of next-token prediction (labels shifted left by one inside,
    -100 ignored), generation through the cache."""

    model_class = FLAModel
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.model_class(config))  # model (backbone for Mamba2)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not hand the layers a DynamicCache: they keep fla.models.Cache

    def get_input_embeddings(self):
        return self.base_model.embeddings

    def set_input_embeddings(self, value):
        self.base_model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      use_cache=True, logits_to_keep=None, **kwargs):
        past_key_values = _cache_argument(past_key_values, kwargs)
        seen = past_key_values.get_seq_length() if past_key_values is not None else 0
        if seen:  # only the tokens the cache has not seen
            input_ids, inputs_embeds = input_ids[:, seen:], None
        model_inputs = dict(inputs_embeds=inputs_embeds) if inputs_embeds is not None and not seen else \
            dict(input_ids=input_ids.contiguous())
        model_inputs.update(past_key_values=past_key_values, use_cache=use_cache, attention_mask=attention_mask,
                            logits_to_keep=logits_to_keep)
        if kwargs.get("use_cuda_graph"):
            model_inputs["use_cuda_graph"] = True
        return model_inputs

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, past_key_values=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                logits_to_keep=0, use_cuda_graph=False, **kwargs):
        """With ``use_cuda_graph`` (``generate(..., use_cuda_graph=True)``), steps of one token per
        sequence on a filled cache, without gradients, replay a CUDA graph (fla.models.cuda_graph)."""
        kwargs.pop("cache_position", None)
        past_key_values = _cache_argument(past_key_values, kwargs)
        if (use_cuda_graph and input_ids is not None and input_ids.shape[1] == 1 and labels is None
                and past_key_values is not None and past_key_values.get_seq_length() > 0
                and not torch.is_grad_enabled() and not output_hidden_states):
            # (the new token is real: a left-padded batch's mask only mattered for the prompt)
            if getattr(self, "_decoding_graphs", None) is None:
                self._decoding_graphs = DecodingGraphs(self)
            logits = self._decoding_graphs(self, input_ids, past_key_values, attention_mask)
            return _output(CausalLMOutputWithPast, past_key_values, loss=None, logits=logits, hidden_states=None,
                           attentions=None)
        out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                         past_key_values=past_key_values, use_cache=use_cache,
                         output_hidden_states=output_hidden_states, **kwargs)
        hidden_states = out.last_hidden_state
        cache = getattr(out, "cache", None) if "cache" in type(out).__dataclass_fields__ else out.past_key_values
        fuse_linear = self.config.fuse_linear_cross_entropy and labels is not None and self.training
        logits = None
        if not fuse_linear:
            keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
            logits = self.lm_head(hidden_states[:, keep])
        loss = None
        if labels is not None:
            labels = labels.to(hidden_states.device)
            labels = torch.cat([labels[..., 1:], torch.full_like(labels[:, :1], -100)], 1)
            if fuse_linear:
                loss = FusedLinearCrossEntropyLoss(use_l2warp=self.config.use_l2warp)(
                    hidden_states.flatten(0, 1), labels.flatten(), self.lm_head.weight, self.lm_head.bias)
            elif self.config.fuse_cross_entropy:
                loss = FusedCrossEntropyLoss()(logits.flatten(0, 1), labels.flatten())
            else:
                loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return _output(CausalLMOutputWithPast, cache, loss=loss, logits=logits, hidden_states=out.hidden_states,
                       attentions=None)


def model_classes(prefix: str, config, block, module: str, model_base=None, **attrs):
    """(<prefix>Model, <prefix>ForCausalLM) of a family: its config class, its block class,
    ``model_base`` (a FLAModel subclass, for model-level parameters) and class attributes given
    to both (base_model_prefix, ...) or, prefixed ``model_`` or ``causal_``, to one of them."""
    def only(prefix_):
        return {k[len(prefix_):]: v for k, v in attrs.items() if k.startswith(prefix_)}
    common = dict(config_class=config, _no_split_modules=[f"{prefix}Block"], __module__=module,
                  **{k: v for k, v in attrs.items() if not k.startswith(("model_", "causal_"))})
    model = type(f"{prefix}Model", (model_base or FLAModel,), dict(common, block_class=block, **only("model_")))
    causal = type(f"{prefix}ForCausalLM", (FLAForCausalLM,), dict(common, model_class=model, **only("causal_")))
    return model, causal


def family(prefix: str, model_type: str, defaults: dict, mixer, module: str, model_base=None):
    """A family's classes, FLA's names: (<prefix>Config, <prefix>Block, <prefix>Model,
    <prefix>ForCausalLM) from its config fields (``defaults``, FLA's) and ``mixer(config,
    layer_idx)``, its token mixer; ``module`` is where they live (for pickling and imports);
    ``model_base`` a subclass of FLAModel for a family with model-level parameters."""
    from fla.models.configuration import FLAConfig
    config = type(f"{prefix}Config", (FLAConfig,), dict(model_type=model_type, defaults=defaults, __module__=module))
    block = type(f"{prefix}Block", (FLABlock,), dict(mixer=staticmethod(mixer), __module__=module))
    return (config, block, *model_classes(prefix, config, block, module, model_base))
