from fla.ops.gla.fused_recurrent import fused_recurrent_gla

__all__ = ["fused_recurrent_gla"]
