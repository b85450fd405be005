from fla.ops.retention.fused_recurrent import fused_recurrent_retention

__all__ = ["fused_recurrent_retention"]
