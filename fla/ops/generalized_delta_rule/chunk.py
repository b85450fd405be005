from fla.ops._entry import check_cu_seqlens_cpu, chunk, negative_float, no_head_first, refuse


def chunk_dplr_delta_rule(q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=False,
                          cu_seqlens=None, cu_seqlens_cpu=None, safe_gate=False, chunk_size=None,
                          disable_recompute=False, cp_context=None, lower_bound=None, *, reverse=False,
                          state_v_first=False, head_first=False):
    """Diagonal plus low rank, chunk by chunk (training and prefill): S_t = (diag(exp(gk_t)) + b_t a_t^T) S_{t-1}
    + k_t v_t^T. q, k, a, b, gk [B, T, HV, K] (q, k [B, T, H, K]); v [B, T, HV, V].

    Any finite log decay <= 0 is exact: ``safe_gate`` and ``lower_bound`` (FLA's licences for
    faster factors) are accepted and change nothing (``lower_bound`` must still be negative);
    ``disable_recompute`` is accepted (no effect); ``cp_context`` (context parallelism) is not
    supported. ``chunk_size``: 16, 32 or 64 (None: 64). Beyond FLA 0.6.0's parameters (keyword
    only): ``reverse`` as in ``fused_recurrent_dplr_delta_rule``, ``state_v_first`` (states
    [N, HV, V, K])."""
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    refuse("cp_context", cp_context, "context parallelism is not supported")
    if lower_bound is not None:
        negative_float("lower_bound", lower_bound)
    return chunk("dplr", q, k, v, {"gk": gk, "a": a, "b": b}, scale=scale, initial_state=initial_state,
                 output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
