from fla.ops.delta_rule.fused_recurrent import fused_recurrent_delta_rule

__all__ = ["fused_recurrent_delta_rule"]
