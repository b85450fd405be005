from fla.ops._entry import check_cu_seqlens_cpu, chunk, no_head_first, scalar_gate


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                     state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, *, reverse=False, chunk_size=None,
                     head_first=False):
    """Scalar-gated linear attention, chunk by chunk: S_t = exp(g_t) S_{t-1} + k_t v_t^T.

    g [B, T, HV] (log decay per token; Mamba2's SSD is g = dt * A with k = B, v = x * dt,
    q = C, scale 1), or g_gamma [HV] (a per-head constant, as in lightning attention);
    neither gives plain linear attention. Differentiable in every input. ``cu_seqlens_cpu``
    is accepted for FLA compatibility and not needed (it must match ``cu_seqlens``'s shape).
    Beyond FLA 0.6.0's parameters (keyword only): ``reverse`` as in
    ``fused_recurrent_simple_gla``, ``chunk_size`` (16, 32, 64 or 128; None for the default).
    """
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    variant, inputs = scalar_gate(g, g_gamma)
    return chunk(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
