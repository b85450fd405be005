from fla.ops._entry import chunk, linear_attn, no_head_first


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False,
                      cu_seqlens=None, *, reverse=False, state_v_first=False, chunk_size=None, head_first=False):
    """Linear attention, chunk by chunk: S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    ``normalize`` defaults to False here as in ``fused_recurrent_linear_attn`` (FLA 0.6.0's
    chunked op defaults to True: one rule for both here). With it, o_t is divided by
    scale q_t . z_t, z_t the running sum of keys, and states are pairs
    ``(S [N, HV, K, V], z [N, 1, HV, K])``. Beyond FLA 0.6.0's parameters (keyword only):
    ``reverse`` as in ``fused_recurrent_linear_attn``, ``state_v_first`` (S as [N, HV, V, K]),
    ``chunk_size`` (16, 32, 64 or 128; None for the default).
    """
    no_head_first(head_first)
    return linear_attn(chunk, normalize, q, k, v, initial_state, scale=scale, output_final_state=output_final_state,
                       reverse=reverse, cu_seqlens=cu_seqlens, state_v_first=state_v_first, chunk_size=chunk_size)
