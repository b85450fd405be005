from fla.ops._entry import fused_recurrent, no_head_first


def fused_recurrent_dplr_delta_rule(q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=False,
                                    reverse=False, cu_seqlens=None, *, state_v_first=False, head_first=False):
    """Diagonal plus low rank, token by token: S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T.

    a, b, gk [B, T, HV, K]. Differentiable in every input (FLA 0.6.0 has no backward here).
    Beyond FLA 0.6.0's parameters (keyword only): ``state_v_first`` (states [N, HV, V, K]).
    """
    no_head_first(head_first)
    return fused_recurrent("dplr", q, k, v, {"gk": gk, "a": a, "b": b}, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
