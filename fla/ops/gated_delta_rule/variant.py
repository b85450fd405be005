"""Which built-in Gated DeltaNet variant, and which inputs, a call of fused_recurrent_gated_delta_rule
or chunk_gated_delta_rule means."""

import torch

from fla.ops._entry import beta_option, expect_shape, ones_like_heads, tensor, variant_name


def gated_delta_rule_variant(v, g, beta, use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias,
                             use_beta_sigmoid_in_kernel, allow_neg_eigval) -> tuple[str, dict]:
    """(variant name, inputs). g [B, T, HV] is the log decay (None: no decay), or with
    ``use_gate_in_kernel`` the raw input of g = -exp(A_log) softplus(g + dt_bias) (A_log [HV]
    required, dt_bias [HV], None means 0; both refused without ``use_gate_in_kernel``).
    beta [B, T, HV] (ones when None), optionally through sigmoid (x2 with ``allow_neg_eigval``)."""
    act = beta_option(use_beta_sigmoid_in_kernel, allow_neg_eigval)
    HV = tensor("v", v, 4, "[B, T, HV, V]").shape[2]
    if beta is None:
        beta = ones_like_heads(v)
    elif isinstance(beta, torch.Tensor) and beta.dim() == 4:
        raise NotImplementedError("a per-value `beta` [B, T, HV, V] is not supported: give beta [B, T, HV]")
    if use_gate_in_kernel:
        if g is None:
            raise ValueError("`g` (the raw gate input) must be given when `use_gate_in_kernel=True`")
        if A_log is None:
            raise ValueError("`A_log` [HV] must be given when `use_gate_in_kernel=True`")
        tensor("g", g, 3, "[B, T, HV] (the raw gate input)")
        expect_shape("A_log", A_log, (HV,), f"[HV] = [{HV}]")
        if dt_bias is not None:
            expect_shape("dt_bias", dt_bias, (HV,), f"[HV] = [{HV}]")
    else:
        for name, x in (("A_log", A_log), ("dt_bias", dt_bias)):
            if x is not None:
                raise ValueError(f"`{name}` takes effect only with `use_gate_in_kernel=True`")
    if g is None:
        g = v.new_zeros(v.shape[:3])
    inputs = {"g": g, "beta": beta}
    if use_gate_in_kernel:
        inputs["A_log"] = A_log
        inputs["dt_bias"] = dt_bias if dt_bias is not None else A_log.new_zeros(HV)
    return variant_name("gated_delta_rule", use_qk_l2norm_in_kernel, "_gate" if use_gate_in_kernel else "", act), inputs
