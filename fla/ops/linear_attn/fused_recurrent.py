from fla.ops._entry import fused_recurrent


def fused_recurrent_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, reverse=False,
                                normalize=False, cu_seqlens=None):
    """Linear attention, token by token: S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    With ``normalize`` (default False here and in ``chunk_linear_attn``: one rule for both),
    o_t is divided by scale q_t . z_t with z_t the running sum of keys, and states are pairs
    ``(S [N, HV, K, V], z [N, 1, HV, K])`` as in FLA.
    """
    if normalize and isinstance(initial_state, tuple):
        s0, z0 = initial_state
        initial_state = (s0, z0.squeeze(1) if z0.dim() == 4 else z0)
    o, final_state = fused_recurrent("linear_attn_normalized" if normalize else "linear_attn", q, k, v, {}, scale,
                                     initial_state, output_final_state, reverse, cu_seqlens)
    if normalize and final_state is not None:
        final_state = (final_state[0], final_state[1].unsqueeze(1))
    return o, final_state
