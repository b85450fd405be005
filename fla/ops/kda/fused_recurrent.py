from fla.ops._entry import fused_recurrent, no_head_first, state_v_first_option
from fla.ops.kda.variant import kda_variant


def fused_recurrent_kda(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None,
                        output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                        use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, lower_bound=None,
                        state_v_first=False, cu_seqlens=None, *, transpose_state_layout=None, head_first=False):
    """KDA, token by token: S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T.

    The gate and beta options as in fla.ops.kda.variant.kda_variant; beta [B, T, HV].
    ``transpose_state_layout`` is FLA's deprecated name of ``state_v_first``.
    """
    no_head_first(head_first)
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    variant, inputs = kda_variant(g, beta, A_log, dt_bias, use_qk_l2norm_in_kernel, use_gate_in_kernel,
                                  use_beta_sigmoid_in_kernel, allow_neg_eigval, lower_bound)
    return fused_recurrent(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
