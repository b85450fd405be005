from fla.ops._entry import fused_recurrent


def fused_recurrent_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, reverse=False, state_v_first=False, cu_seqlens=None,
                               **kwargs):
    """Scalar-gated linear attention, token by token: S_t = exp(g_t) S_{t-1} + k_t v_t^T.

    g [B, T, HV] (log decay per token), or g_gamma [HV] (a per-head constant, as in
    lightning attention); neither gives plain linear attention. Differentiable in every input.
    """
    if g is not None and g_gamma is not None:
        raise ValueError("give at most one of `g` and `g_gamma`")
    if g is not None:
        variant, inputs = "simple_gla", {"g": g}
    elif g_gamma is not None:
        variant, inputs = "simple_gla_gamma", {"g_gamma": g_gamma}
    else:
        variant, inputs = "linear_attn", {}
    return fused_recurrent(variant, q, k, v, inputs, scale, initial_state, output_final_state, reverse,
                           cu_seqlens, state_v_first)
