from fla.ops._entry import no_head_first
from fla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule


def fused_recurrent_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=True, cu_seqlens=None,
                          *, state_v_first=False, head_first=False):
    """RWKV7 = DPLR with q = r and gk = w. ``scale`` defaults to 1.0 for every rwkv7 entry point
    (FLA 0.6.0's recurrent and chunked defaults differ; we keep RWKV7's own convention).
    Beyond FLA 0.6.0's parameters (keyword only): ``state_v_first`` (states [N, HV, V, K])."""
    no_head_first(head_first)
    return fused_recurrent_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                           state_v_first=state_v_first)
