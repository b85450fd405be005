from fla.ops._entry import fused_recurrent, unsupported


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, state_v_first=False, cu_seqlens=None, **kwargs):
    """GLA, token by token: S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T, gk [B, T, HV, K]."""
    unsupported("gv", gv, "value-side gates are not in the recurrence IR yet")
    variant, inputs = ("gla", {"g": gk}) if gk is not None else ("linear_attn", {})
    return fused_recurrent(variant, q, k, v, inputs, scale, initial_state, output_final_state, reverse,
                           cu_seqlens, state_v_first)
