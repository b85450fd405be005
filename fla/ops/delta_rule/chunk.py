from fla.ops._entry import check_cu_seqlens_cpu, chunk, no_head_first, variant_name


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None, *, state_v_first=False,
                     chunk_size=None, head_first=False):
    """DeltaNet, chunk by chunk (training and prefill): S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T.

    q, k [B, T, H, K]; v [B, T, HV, V]; beta [B, T, HV]. Beyond FLA 0.6.0's
    parameters (keyword only): ``state_v_first``, ``chunk_size`` (16, 32 or 64; None: 64)."""
    no_head_first(head_first)
    check_cu_seqlens_cpu(cu_seqlens_cpu, cu_seqlens)
    return chunk(variant_name("delta_rule", use_qk_l2norm_in_kernel), q, k, v, {"beta": beta}, scale=scale,
                 initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                 state_v_first=state_v_first, chunk_size=chunk_size)
