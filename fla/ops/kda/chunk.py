from fla.ops._entry import check_cu_seqlens_cpu, chunk, no_head_first, refuse, state_v_first_option
from fla.ops.kda.variant import kda_variant


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
              allow_neg_eigval=False, safe_gate=False, lower_bound=None, disable_recompute=False,
              return_intermediate_states=False, state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
              cp_context=None, use_graph=False, max_num_seqs=None, *, A_log=None, dt_bias=None,
              transpose_state_layout=None, chunk_size=None, head_first=False):
    """KDA, chunk by chunk (training and prefill): S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1}
    + beta_t k_t v_t^T. q, k [B, T, H, K]; v [B, T, HV, V]; g [B, T, HV, K]; beta [B, T, HV].

    The gate and beta options as in fla.ops.kda.variant.kda_variant (``A_log``, ``dt_bias`` by
    keyword, as FLA takes them). Any finite log decay <= 0 is exact: ``safe_gate`` (FLA's
    guard for its sub-chunk factors) changes nothing here and is accepted. ``disable_recompute``
    and ``use_graph``/``max_num_seqs`` are accepted (no effect). Not supported:
    ``return_intermediate_states``, ``cp_context`` (context parallelism). ``chunk_size``: 16,
    32 or 64 (None: 64).
    """
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    refuse("return_intermediate_states", return_intermediate_states, "the chunk states are not returned")
    refuse("cp_context", cp_context, "context parallelism is not supported")
    if max_num_seqs is not None and not use_graph:
        raise ValueError("`max_num_seqs` takes effect only with `use_graph=True`")
    if safe_gate and use_gate_in_kernel and lower_bound is None:
        raise ValueError("`lower_bound` must be given when `safe_gate=True` and `use_gate_in_kernel=True`")
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    variant, inputs = kda_variant(g, beta, A_log, dt_bias, use_qk_l2norm_in_kernel, use_gate_in_kernel,
                                  use_beta_sigmoid_in_kernel, allow_neg_eigval, lower_bound)
    return chunk(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, state_v_first=state_v_first,
                 chunk_size=chunk_size)
