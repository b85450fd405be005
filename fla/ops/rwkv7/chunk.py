from fla.ops._entry import no_head_first
from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule


def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                cu_seqlens_cpu=None, safe_gate=False, chunk_size=None, disable_recompute=False, cp_context=None,
                lower_bound=None, *, state_v_first=False, head_first=False):
    """RWKV7 chunk by chunk = chunk_dplr_delta_rule with q = r and gk = w (its options).
    Beyond FLA 0.6.0's parameters (keyword only): ``state_v_first`` (states [N, HV, V, K])."""
    no_head_first(head_first)
    return chunk_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                 cu_seqlens_cpu=cu_seqlens_cpu, safe_gate=safe_gate, chunk_size=chunk_size,
                                 disable_recompute=disable_recompute, cp_context=cp_context, lower_bound=lower_bound,
                                 state_v_first=state_v_first)
