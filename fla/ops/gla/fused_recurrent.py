from fla.ops._entry import fused_recurrent, no_head_first, refuse, state_v_first_option


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, state_v_first=False, cu_seqlens=None, *, transpose_state_layout=None,
                        head_first=False):
    """GLA, token by token: S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T, gk [B, T, HV, K]
    (None: plain linear attention). ``gv`` (value-side gates) is not supported.
    ``transpose_state_layout`` is FLA's deprecated name of ``state_v_first``."""
    no_head_first(head_first)
    refuse("gv", gv, "value-side gates are not in the recurrence IR yet")
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    variant, inputs = ("gla", {"g": gk}) if gk is not None else ("linear_attn", {})
    return fused_recurrent(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, reverse=reverse, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
