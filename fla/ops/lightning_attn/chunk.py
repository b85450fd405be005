import numbers

import torch

from fla.ops._entry import chunk, no_head_first, tensor


def chunk_lightning_attn(q, k, v, layer_idx, num_layers, scale=None, initial_state=None, output_final_state=False,
                         cu_seqlens=None, *, reverse=False, state_v_first=False, chunk_size=None, head_first=False):
    """Lightning attention: simple GLA with the fixed per-head log decay
    g_gamma_h = -(8 / HV) (1 - layer_idx / num_layers) h, h = 0..HV-1 (0 <= layer_idx < num_layers).

    Beyond FLA 0.6.0's parameters (keyword only): ``reverse`` as in FLA's
    ``fused_recurrent_lightning_attn``, ``state_v_first`` (states [N, HV, V, K]), ``chunk_size``
    (16, 32, 64 or 128; None for the default).
    """
    no_head_first(head_first)
    for name, x in (("layer_idx", layer_idx), ("num_layers", num_layers)):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"`{name}` must be an int, got {type(x).__name__}")
    if num_layers < 1 or not 0 <= layer_idx < num_layers:
        raise ValueError(f"need 0 <= `layer_idx` < `num_layers`, got layer_idx={layer_idx}, num_layers={num_layers}")
    HV = tensor("v", v, 4, "[B, T, HV, V]").shape[2]
    g_gamma = -(8 / HV * (1 - layer_idx / num_layers)) * torch.arange(HV, dtype=torch.float32, device=v.device)
    return chunk("simple_gla_gamma", q, k, v, {"g_gamma": g_gamma}, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
