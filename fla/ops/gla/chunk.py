from fla.ops._entry import check_cu_seqlens_cpu, chunk, no_head_first


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
              cu_seqlens=None, cu_seqlens_cpu=None, *, reverse=False, chunk_size=None, head_first=False):
    """Gated linear attention (also HGRN2), chunk by chunk: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T.

    q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K] (log decays). Returns (o, final_state).
    ``cu_seqlens_cpu`` is accepted for FLA compatibility and not needed. Beyond FLA 0.6.0's
    parameters (keyword only): ``reverse`` as in ``fused_recurrent_gla``, ``chunk_size``
    (16, 32, 64 or 128; None for the default).
    """
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    return chunk("gla", q, k, v, {"g": g}, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
