from fla.ops.linear_attn.fused_recurrent import fused_recurrent_linear_attn

__all__ = ["fused_recurrent_linear_attn"]
