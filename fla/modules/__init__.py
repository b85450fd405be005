"""FLA 0.6.0's ``fla.modules``: norms (plain, gated, fused with the next linear layer), rotary
embeddings, the short causal convolution, L2 norm, the gated MLP and the fused losses, with
FLA's names, arguments and parameter names."""

from fla.modules.convolution import ShortConvolution
from fla.modules.fused_cross_entropy import FusedCrossEntropyLoss
from fla.modules.fused_kl_div import FusedKLDivLoss
from fla.modules.fused_linear_cross_entropy import FusedLinearCrossEntropyLoss
from fla.modules.fused_norm_gate import (FusedLayerNormGated, FusedLayerNormSwishGate, FusedLayerNormSwishGateLinear,
                                         FusedRMSNormGated, FusedRMSNormSwishGate, FusedRMSNormSwishGateLinear)
from fla.modules.l2norm import L2Norm, l2_norm, l2norm
from fla.modules.layernorm import GroupNorm, GroupNormLinear, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear
from fla.modules.mlp import GatedMLP
from fla.modules.rotary import RotaryEmbedding

__all__ = [
    "FusedCrossEntropyLoss", "FusedKLDivLoss", "FusedLayerNormGated", "FusedLayerNormSwishGate",
    "FusedLayerNormSwishGateLinear", "FusedLinearCrossEntropyLoss", "FusedRMSNormGated", "FusedRMSNormSwishGate",
    "FusedRMSNormSwishGateLinear", "GatedMLP", "GroupNorm", "GroupNormLinear", "L2Norm", "LayerNorm",
    "LayerNormLinear", "RMSNorm", "RMSNormLinear", "RotaryEmbedding", "ShortConvolution", "l2_norm", "l2norm",
]
