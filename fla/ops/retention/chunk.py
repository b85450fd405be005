from fla.ops._entry import chunk


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    chunk_size=None, **kwargs):
    """RetNet, chunk by chunk: S_t = gamma_h S_{t-1} + k_t v_t^T with gamma_h = 1 - 2^(-5-h).

    q, k [B, T, H, K]; v [B, T, HV, V]; states [N, HV, K, V] fp32. Returns (o, final_state).
    """
    return chunk("retention", q, k, v, {}, scale, initial_state, output_final_state, cu_seqlens,
                 chunk_size=chunk_size)
