from fla.ops.generalized_delta_rule.chunk import chunk_dplr_delta_rule
from fla.ops.generalized_delta_rule.fused_recurrent import fused_recurrent_dplr_delta_rule

__all__ = ["chunk_dplr_delta_rule", "fused_recurrent_dplr_delta_rule"]
