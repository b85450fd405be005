from fla.ops.retention.chunk import chunk_retention
from fla.ops.retention.fused_recurrent import fused_recurrent_retention

__all__ = ["chunk_retention", "fused_recurrent_retention"]
