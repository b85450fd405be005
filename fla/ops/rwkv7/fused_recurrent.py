from fla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule


def fused_recurrent_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=True, cu_seqlens=None):
    """RWKV7 = DPLR with q = r and gk = w. ``scale`` defaults to 1.0 for every rwkv7 entry point
    (FLA 0.6.0's recurrent and chunked defaults differ; we keep RWKV7's own convention)."""
    return fused_recurrent_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, cu_seqlens=cu_seqlens)
