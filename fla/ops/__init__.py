"""FLA-compatible ops, one module per family.

Every entry point takes FLA 0.6.0's parameters by name, the positional ones in FLA's order
(tests/records/fla060_op_signatures.json), plus keyword-only extras (``state_v_first``,
``reverse`` and ``chunk_size`` on the chunked forms, ``head_first=False``). Unknown keywords
raise TypeError; FLA parameters we cannot honour (``gv``, ``head_first=True``) raise
NotImplementedError when given a non-default value.
"""

from fla.ops.retention import chunk_retention, fused_recurrent_retention
from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from fla.ops.lightning_attn import chunk_lightning_attn
from fla.ops.gla import chunk_gla, fused_recurrent_gla
from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6
from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from fla.ops.kda import chunk_kda, fused_recurrent_kda
from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

__all__ = [
    "chunk_retention", "chunk_linear_attn", "chunk_simple_gla", "chunk_lightning_attn", "chunk_gla", "chunk_rwkv6",
    "chunk_delta_rule", "chunk_gated_delta_rule", "chunk_kda", "chunk_dplr_delta_rule", "chunk_rwkv7",
    "fused_recurrent_retention", "fused_recurrent_linear_attn", "fused_recurrent_simple_gla", "fused_recurrent_gla",
    "fused_recurrent_rwkv6", "fused_recurrent_delta_rule", "fused_recurrent_gated_delta_rule", "fused_recurrent_kda",
    "fused_recurrent_dplr_delta_rule", "fused_recurrent_rwkv7",
]
