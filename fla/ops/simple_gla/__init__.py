from fla.ops.simple_gla.fused_recurrent import fused_recurrent_simple_gla

__all__ = ["fused_recurrent_simple_gla"]
