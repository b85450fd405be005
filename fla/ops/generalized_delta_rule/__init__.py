from fla.ops.generalized_delta_rule.fused_recurrent import fused_recurrent_dplr_delta_rule

__all__ = ["fused_recurrent_dplr_delta_rule"]
