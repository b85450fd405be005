from fla.ops.rwkv7.fused_recurrent import fused_recurrent_rwkv7

__all__ = ["fused_recurrent_rwkv7"]
