from fla.ops._entry import chunk


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
              cu_seqlens=None, cu_seqlens_cpu=None, chunk_size=None, **kwargs):
    """Gated linear attention (also HGRN2), chunk by chunk: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T.

    q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K] (log decays). Returns (o, final_state).
    """
    return chunk("gla", q, k, v, {"g": g}, scale, initial_state, output_final_state, cu_seqlens, state_v_first,
                 chunk_size)
