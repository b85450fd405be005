from fla.ops._entry import fused_recurrent, linear_attn


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                                normalize=False, cu_seqlens=None):
    """Linear attention, token by token: S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    With ``normalize`` (default False here and in ``chunk_linear_attn``: one rule for both),
    o_t is divided by scale q_t . z_t with z_t the running sum of keys, and states are pairs
    ``(S [N, HV, K, V], z [N, 1, HV, K])`` as in FLA.
    """
    return linear_attn(fused_recurrent, normalize, q, k, v, scale, initial_state, output_final_state, reverse,
                       cu_seqlens)
