from fla.ops.kda.fused_recurrent import fused_recurrent_kda

__all__ = ["fused_recurrent_kda"]
