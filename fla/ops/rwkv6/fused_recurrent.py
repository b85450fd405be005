from fla.ops._entry import fused_recurrent


def fused_recurrent_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, reverse=False,
                          cu_seqlens=None):
    """RWKV6, token by token: S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T,
    o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T r_t; w [B, T, HV, K], u [HV, K]."""
    return fused_recurrent("rwkv6", r, k, v, {"w": w, "u": u}, scale, initial_state, output_final_state, reverse,
                           cu_seqlens)
