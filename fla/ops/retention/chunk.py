from fla.ops._entry import chunk, no_head_first


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None, *,
                    reverse=False, state_v_first=False, chunk_size=None, head_first=False):
    """RetNet, chunk by chunk: S_t = gamma_h S_{t-1} + k_t v_t^T with gamma_h = 1 - 2^(-5-h).

    q, k [B, T, H, K]; v [B, T, HV, V]; states [N, HV, K, V] fp32 ([N, HV, V, K] with
    ``state_v_first``). Returns (o, final_state). Beyond FLA 0.6.0's parameters (keyword only):
    ``reverse`` and ``state_v_first`` as in ``fused_recurrent_retention``, ``chunk_size``
    (16, 32, 64 or 128; None for the default).
    """
    no_head_first(head_first)
    return chunk("retention", q, k, v, {}, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
