from fla.ops.lightning_attn.chunk import chunk_lightning_attn

__all__ = ["chunk_lightning_attn"]
