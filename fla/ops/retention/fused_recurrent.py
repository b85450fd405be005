from fla.ops._entry import fused_recurrent, no_head_first, state_v_first_option


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                              state_v_first=False, cu_seqlens=None, *, transpose_state_layout=None,
                              head_first=False):
    """RetNet, token by token: S_t = gamma_h S_{t-1} + k_t v_t^T, gamma_h = 1 - 2^(-5-h).

    q, k [B, T, H, K]; v [B, T, HV, V]; initial_state [N, HV, K, V] ([N, HV, V, K] with
    ``state_v_first``); returns (o [B, T, HV, V], final_state [N, HV, K, V] fp32 or None).
    Differentiable in q, k, v and initial_state. ``transpose_state_layout`` is FLA's deprecated
    name of ``state_v_first``.
    """
    no_head_first(head_first)
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    return fused_recurrent("retention", q, k, v, {}, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
