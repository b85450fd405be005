"""FLA 0.6.0's ``fla.layers``: token-mixing layers with FLA's names, arguments and parameter
names, on flagen's kernels. forward(hidden_states, attention_mask=None, past_key_values=None,
use_cache=False, output_attentions=False, **kwargs) -> (o, None, past_key_values)."""

from fla.layers.attn import Attention
from fla.layers.delta_net import DeltaNet
from fla.layers.gated_deltanet import GatedDeltaNet
from fla.layers.gla import GatedLinearAttention
from fla.layers.hgrn2 import HGRN2Attention
from fla.layers.kda import KimiDeltaAttention
from fla.layers.linear_attn import LinearAttention
from fla.layers.mamba2 import Mamba2
from fla.layers.multiscale_retention import MultiScaleRetention
from fla.layers.recurrent import RecurrentLayer
from fla.layers.rwkv6 import RWKV6Attention
from fla.layers.rwkv7 import RWKV7Attention

__all__ = ["Attention", "DeltaNet", "GatedDeltaNet", "GatedLinearAttention", "HGRN2Attention", "KimiDeltaAttention", "LinearAttention", "Mamba2", "MultiScaleRetention", "RecurrentLayer", "RWKV6Attention", "RWKV7Attention"]
