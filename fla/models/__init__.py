"""FLA 0.6.0's ``fla.models``: a config, a model and a causal LM per family on one shared stack
(fla.models.modeling), registered with transformers' Auto classes; the generation cache."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from fla.models.cache_utils import Cache, FLACache, FLALayer
from fla.models.delta_net import DeltaNetConfig, DeltaNetForCausalLM, DeltaNetModel
from fla.models.gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, GatedDeltaNetModel
from fla.models.gla import GLAConfig, GLAForCausalLM, GLAModel
from fla.models.hgrn2 import HGRN2Config, HGRN2ForCausalLM, HGRN2Model
from fla.models.kda import KDAConfig, KDAForCausalLM, KDAModel
from fla.models.mamba2 import Mamba2Config, Mamba2ForCausalLM, Mamba2Model
from fla.models.linear_attn import LinearAttentionConfig, LinearAttentionForCausalLM, LinearAttentionModel
from fla.models.recurrent import RecurrentConfig, RecurrentForCausalLM, RecurrentModel
from fla.models.retnet import RetNetConfig, RetNetForCausalLM, RetNetModel
from fla.models.rwkv6 import RWKV6Config, RWKV6ForCausalLM, RWKV6Model
from fla.models.rwkv7 import RWKV7Config, RWKV7ForCausalLM, RWKV7Model
from fla.models.transformer import TransformerConfig, TransformerForCausalLM, TransformerModel

FAMILIES = [(DeltaNetConfig, DeltaNetModel, DeltaNetForCausalLM),
            (GatedDeltaNetConfig, GatedDeltaNetModel, GatedDeltaNetForCausalLM),
            (GLAConfig, GLAModel, GLAForCausalLM), (HGRN2Config, HGRN2Model, HGRN2ForCausalLM), (KDAConfig, KDAModel, KDAForCausalLM),
            (LinearAttentionConfig, LinearAttentionModel, LinearAttentionForCausalLM),
            (Mamba2Config, Mamba2Model, Mamba2ForCausalLM), (RetNetConfig, RetNetModel, RetNetForCausalLM),
            (RWKV6Config, RWKV6Model, RWKV6ForCausalLM), (RWKV7Config, RWKV7Model, RWKV7ForCausalLM), (TransformerConfig, TransformerModel, TransformerForCausalLM)]
# FLA's families, then flagen's own: a model of any recurrence (no FLA counterpart)
for _config, _model, _causal in [*FAMILIES, (RecurrentConfig, RecurrentModel, RecurrentForCausalLM)]:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _causal, exist_ok=True)

__all__ = ["Cache", "FLACache", "FLALayer", "RecurrentConfig", "RecurrentModel", "RecurrentForCausalLM",
           *(c.__name__ for family in FAMILIES for c in family)]
