from fla.ops._entry import fused_recurrent


def fused_recurrent_retention(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                              state_v_first=False, cu_seqlens=None, **kwargs):
    """RetNet, token by token: S_t = gamma_h S_{t-1} + k_t v_t^T, gamma_h = 1 - 2^(-5-h).

    q, k [B, T, H, K]; v [B, T, HV, V]; initial_state [N, HV, K, V]; returns (o [B, T, HV, V],
    final_state [N, HV, K, V] fp32 or None). Differentiable in q, k, v and initial_state.
    """
    return fused_recurrent("retention", q, k, v, {}, scale, initial_state, output_final_state, reverse,
                           cu_seqlens, state_v_first)
