import torch

from fla.ops._entry import chunk


def chunk_lightning_attn(q, k, v, layer_idx, num_layers, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None, chunk_size=None, **kwargs):
    """Lightning attention: simple GLA with the fixed per-head log decay
    g_gamma_h = -(8 / HV) (1 - layer_idx / num_layers) h, h = 0..HV-1."""
    HV = v.shape[2]
    g_gamma = -(8 / HV * (1 - layer_idx / num_layers)) * torch.arange(HV, dtype=torch.float32, device=q.device)
    return chunk("simple_gla_gamma", q, k, v, {"g_gamma": g_gamma}, scale, initial_state, output_final_state,
                 cu_seqlens, chunk_size=chunk_size)
