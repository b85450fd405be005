from fla.ops._entry import check_cu_seqlens_cpu, chunk, no_head_first, refuse, state_v_first_option
from fla.ops.gated_delta_rule.variant import gated_delta_rule_variant


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                           state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, chunk_indices=None,
                           cp_context=None, *, use_gate_in_kernel=False, A_log=None, dt_bias=None,
                           transpose_state_layout=None, chunk_size=None, head_first=False):
    """Gated DeltaNet, chunk by chunk (training and prefill): S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1}
    + beta_t k_t v_t^T. q, k [B, T, H, K]; v [B, T, HV, V]; g, beta [B, T, HV].

    The gate and beta options as in fla.ops.gated_delta_rule.variant (``use_gate_in_kernel``,
    ``A_log``, ``dt_bias`` by keyword, as FLA takes them). ``chunk_indices`` (FLA's precomputed
    chunk layout) must fit ``cu_seqlens`` and is not needed; ``cp_context`` (context
    parallelism) is not supported. ``chunk_size``: 16, 32 or 64 (None: 64).
    """
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    if chunk_indices is not None and cu_seqlens is None:
        raise ValueError("`chunk_indices` is given without `cu_seqlens`")
    refuse("cp_context", cp_context, "context parallelism is not supported")
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    variant, inputs = gated_delta_rule_variant(v, g, beta, use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log,
                                               dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    return chunk(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
                 chunk_size=chunk_size)
