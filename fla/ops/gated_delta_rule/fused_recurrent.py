from fla.ops._entry import beta_option, fused_recurrent, ones_like_heads, unsupported, variant_name


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None, initial_state=None,
                                     output_final_state=False, use_qk_l2norm_in_kernel=False,
                                     use_gate_in_kernel=False, A_log=None, dt_bias=None,
                                     use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, state_v_first=False,
                                     cu_seqlens=None, **kwargs):
    """Gated DeltaNet, token by token: S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T.

    g [B, T, HV] is the log decay, or with ``use_gate_in_kernel`` the raw input of
    g = -exp(A_log) softplus(g + dt_bias) (A_log, dt_bias [HV]; dt_bias None means 0).
    A per-key ``gk`` [B, T, HV, K] instead of g gives KDA's transition. beta [B, T, HV] (ones
    when None), optionally through sigmoid (x2 with ``allow_neg_eigval``) in the kernel.
    """
    unsupported("gv", gv, "value-side gates are not in the recurrence IR yet")
    if g is not None and gk is not None:
        raise ValueError("give at most one of `g` and `gk`")
    act = beta_option(use_beta_sigmoid_in_kernel, allow_neg_eigval)
    beta = ones_like_heads(v) if beta is None else beta
    if gk is not None:
        from fla.ops.kda import fused_recurrent_kda
        return fused_recurrent_kda(q, k, v, gk, beta, A_log=A_log, dt_bias=dt_bias, scale=scale,
                                   initial_state=initial_state, output_final_state=output_final_state,
                                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                   use_gate_in_kernel=use_gate_in_kernel,
                                   use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                                   allow_neg_eigval=allow_neg_eigval, state_v_first=state_v_first,
                                   cu_seqlens=cu_seqlens)
    if g is None:
        if use_gate_in_kernel:
            raise ValueError("`g` (the raw gate input) must be given when `use_gate_in_kernel=True`")
        g = v.new_zeros(v.shape[:3], dtype=v.dtype)
    inputs = {"g": g, "beta": beta}
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("`A_log` must be given when `use_gate_in_kernel=True`")
        inputs["A_log"] = A_log
        inputs["dt_bias"] = dt_bias if dt_bias is not None else A_log.new_zeros(A_log.shape)
    variant = variant_name("gated_delta_rule", use_qk_l2norm_in_kernel, "_gate" if use_gate_in_kernel else "", act)
    return fused_recurrent(variant, q, k, v, inputs, scale, initial_state, output_final_state, False, cu_seqlens,
                           state_v_first)
