import torch

from fla.ops._entry import beta_option, fused_recurrent, variant_name


def fused_recurrent_kda(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None,
                        output_final_state=False, use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                        use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, lower_bound=None,
                        state_v_first=False, cu_seqlens=None, **kwargs):
    """KDA, token by token: S_t = (I - beta_t k_t k_t^T) diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T.

    g [B, T, HV, K] is the log decay, or with ``use_gate_in_kernel`` the raw input of
    -exp(A_log) softplus(g + dt_bias), or with ``lower_bound`` (a negative float)
    lower_bound * sigmoid(exp(A_log) (g + dt_bias)); A_log [HV] (None means 0), dt_bias
    [HV, K] or [HV * K] (None means 0). beta [B, T, HV], optionally sigmoid-ed in the kernel.
    """
    act = beta_option(use_beta_sigmoid_in_kernel, allow_neg_eigval)
    inputs = {"g": g, "beta": beta}
    gate = ""
    if use_gate_in_kernel:
        HV, K = g.shape[2], g.shape[3]
        inputs["A_log"] = A_log if A_log is not None else g.new_zeros(HV, dtype=torch.float32)
        inputs["dt_bias"] = dt_bias.reshape(HV, K) if dt_bias is not None else g.new_zeros(HV, K, dtype=torch.float32)
        gate = "_gate"
        if lower_bound is not None:
            inputs["lower_bound"] = float(lower_bound)
            gate = "_gate_lower_bound"
    elif lower_bound is not None:
        raise ValueError("`lower_bound` takes effect only with `use_gate_in_kernel=True`")
    return fused_recurrent(variant_name("kda", use_qk_l2norm_in_kernel, gate, act), q, k, v, inputs, scale,
                           initial_state, output_final_state, False, cu_seqlens, state_v_first)
