from fla.ops._entry import check_cu_seqlens_cpu, chunk, no_head_first


def chunk_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                cu_seqlens_cpu=None, *, reverse=False, state_v_first=False, chunk_size=None, head_first=False):
    """RWKV6, chunk by chunk: S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T,
    o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T r_t; w [B, T, HV, K], u [HV, K].

    ``cu_seqlens_cpu`` is accepted for FLA compatibility and not needed. Beyond FLA 0.6.0's
    parameters (keyword only): ``reverse`` as in ``fused_recurrent_rwkv6``, ``state_v_first``
    (states [N, HV, V, K]), ``chunk_size`` (16, 32, 64 or 128; None for the default).
    """
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    return chunk("rwkv6", r, k, v, {"w": w, "u": u}, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
