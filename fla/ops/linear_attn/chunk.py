from fla.ops._entry import chunk, linear_attn


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=False,
                      cu_seqlens=None, chunk_size=None, **kwargs):
    """Linear attention, chunk by chunk: S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    ``normalize`` defaults to False here as in ``fused_recurrent_linear_attn`` (FLA 0.6.0's
    chunked op defaults to True: one rule for both here). With it, o_t is divided by
    scale q_t . z_t, z_t the running sum of keys, and states are pairs
    ``(S [N, HV, K, V], z [N, 1, HV, K])``.
    """
    return linear_attn(chunk, normalize, q, k, v, scale, initial_state, output_final_state, cu_seqlens,
                       chunk_size=chunk_size)
