"""Which built-in KDA variant, and which inputs, a call of fused_recurrent_kda or chunk_kda means."""

import torch

from fla.ops._entry import beta_option, expect_shape, negative_float, tensor, variant_name


def kda_variant(g, beta, A_log, dt_bias, use_qk_l2norm_in_kernel, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
                allow_neg_eigval, lower_bound) -> tuple[str, dict]:
    """(variant name, inputs). g [B, T, HV, K] is the log decay, or with ``use_gate_in_kernel``
    the raw input of -exp(A_log) softplus(g + dt_bias), or with ``lower_bound`` (a negative
    float) lower_bound * sigmoid(exp(A_log) (g + dt_bias)). A_log [HV] (required without
    ``lower_bound``; None with it means 0, as in FLA), dt_bias [HV, K] or [HV * K] (None means 0);
    A_log, dt_bias and lower_bound are refused without ``use_gate_in_kernel``."""
    act = beta_option(use_beta_sigmoid_in_kernel, allow_neg_eigval)
    inputs = {"g": g, "beta": beta}
    gate = ""
    if use_gate_in_kernel:
        tensor("g", g, 4, "[B, T, HV, K] (the raw gate input)")
        HV, K = g.shape[2], g.shape[3]
        if lower_bound is not None:
            lower_bound = negative_float("lower_bound", lower_bound)
        elif A_log is None:
            # FLA's kernel would use exp(1) for a missing A_log here: refuse rather than guess
            raise ValueError("`A_log` [HV] must be given when `use_gate_in_kernel=True` without `lower_bound`")
        if A_log is None:
            A_log = g.new_zeros(HV, dtype=torch.float32)
        expect_shape("A_log", A_log, (HV,), f"[HV] = [{HV}]")
        if dt_bias is None:
            dt_bias = g.new_zeros(HV, K, dtype=torch.float32)
        else:
            tensor("dt_bias", dt_bias, what=f"[HV, K] = [{HV}, {K}] or [HV * K] = [{HV * K}]")
            if tuple(dt_bias.shape) not in ((HV, K), (HV * K,)):
                raise ValueError(f"`dt_bias` must have shape [HV, K] = [{HV}, {K}] or [HV * K] = [{HV * K}] "
                                 f"(HV, K from `g` [B, T, HV, K]), got {tuple(dt_bias.shape)}")
            dt_bias = dt_bias.reshape(HV, K)
        inputs.update(A_log=A_log, dt_bias=dt_bias)
        gate = "_gate"
        if lower_bound is not None:
            inputs["lower_bound"] = lower_bound
            gate = "_gate_lower_bound"
    else:
        for name, x in (("A_log", A_log), ("dt_bias", dt_bias), ("lower_bound", lower_bound)):
            if x is not None:
                raise ValueError(f"`{name}` takes effect only with `use_gate_in_kernel=True`")
    return variant_name("kda", use_qk_l2norm_in_kernel, gate, act), inputs
