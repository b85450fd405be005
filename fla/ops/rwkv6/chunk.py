from fla.ops._entry import chunk


def chunk_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                cu_seqlens_cpu=None, chunk_size=None, **kwargs):
    """RWKV6, chunk by chunk: S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T,
    o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T r_t; w [B, T, HV, K], u [HV, K]."""
    return chunk("rwkv6", r, k, v, {"w": w, "u": u}, scale, initial_state, output_final_state, cu_seqlens,
                 chunk_size=chunk_size)
