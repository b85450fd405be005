from fla.ops._entry import fused_recurrent, no_head_first, scalar_gate, state_v_first_option


def fused_recurrent_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None, *,
                               transpose_state_layout=None, head_first=False):
    """Scalar-gated linear attention, token by token: S_t = exp(g_t) S_{t-1} + k_t v_t^T.

    g [B, T, HV] (log decay per token), or g_gamma [HV] (a per-head constant, as in
    lightning attention); neither gives plain linear attention. Differentiable in every input.
    ``transpose_state_layout`` is FLA's deprecated name of ``state_v_first``.
    """
    no_head_first(head_first)
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    variant, inputs = scalar_gate(g, g_gamma)
    return fused_recurrent(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
