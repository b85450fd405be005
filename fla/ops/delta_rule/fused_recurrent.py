from fla.ops._entry import fused_recurrent, no_head_first, ones_like_heads, variant_name


def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, cu_seqlens=None, *, state_v_first=False,
                               head_first=False):
    """DeltaNet, token by token: S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T.

    beta [B, T, HV] (ones when None); ``use_qk_l2norm_in_kernel`` L2-normalises q and k in the
    kernel (and differentiates through it). Beyond FLA 0.6.0's parameters (keyword only):
    ``state_v_first`` (states [N, HV, V, K])."""
    no_head_first(head_first)
    beta = ones_like_heads(v) if beta is None else beta
    return fused_recurrent(variant_name("delta_rule", use_qk_l2norm_in_kernel), q, k, v, {"beta": beta},
                           scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                           cu_seqlens=cu_seqlens, state_v_first=state_v_first)
