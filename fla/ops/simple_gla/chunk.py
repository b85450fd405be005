from fla.ops._entry import chunk


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
                     state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, chunk_size=None, **kwargs):
    """Scalar-gated linear attention, chunk by chunk: S_t = exp(g_t) S_{t-1} + k_t v_t^T.

    g [B, T, HV] (log decay per token; Mamba2's SSD is g = dt * A with k = B, v = x * dt,
    q = C, scale 1), or g_gamma [HV] (a per-head constant, as in lightning attention);
    neither gives plain linear attention. Differentiable in every input. ``cu_seqlens_cpu``
    is accepted for FLA compatibility and not needed.
    """
    if g is not None and g_gamma is not None:
        raise ValueError("give at most one of `g` and `g_gamma`")
    if g is not None:
        variant, inputs = "simple_gla", {"g": g}
    elif g_gamma is not None:
        variant, inputs = "simple_gla_gamma", {"g_gamma": g_gamma}
    else:
        variant, inputs = "linear_attn", {}
    return chunk(variant, q, k, v, inputs, scale, initial_state, output_final_state, cu_seqlens, state_v_first,
                 chunk_size)
