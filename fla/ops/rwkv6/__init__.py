from fla.ops.rwkv6.fused_recurrent import fused_recurrent_rwkv6

__all__ = ["fused_recurrent_rwkv6"]
