from fla.ops._entry import fused_recurrent, no_head_first


def fused_recurrent_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, reverse=False,
                          cu_seqlens=None, *, state_v_first=False, head_first=False):
    """RWKV6, token by token: S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T,
    o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T r_t; w [B, T, HV, K], u [HV, K].
    Beyond FLA 0.6.0's parameters (keyword only): ``state_v_first`` (states [N, HV, V, K])."""
    no_head_first(head_first)
    return fused_recurrent("rwkv6", r, k, v, {"w": w, "u": u}, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
