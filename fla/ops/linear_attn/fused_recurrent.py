from fla.ops._entry import fused_recurrent, linear_attn, no_head_first


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                                normalize=False, cu_seqlens=None, *, state_v_first=False, head_first=False):
    """Linear attention, token by token: S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    With ``normalize`` (default False here and in ``chunk_linear_attn``: one rule for both),
    o_t is divided by scale q_t . z_t with z_t the running sum of keys, and states are pairs
    ``(S [N, HV, K, V], z [N, 1, HV, K])`` as in FLA. Beyond FLA 0.6.0's parameters (keyword
    only): ``state_v_first`` (S as [N, HV, V, K]).
    """
    no_head_first(head_first)
    return linear_attn(fused_recurrent, normalize, q, k, v, initial_state, scale=scale,
                       output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                       state_v_first=state_v_first)
