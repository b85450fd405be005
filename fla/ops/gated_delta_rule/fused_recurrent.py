import torch
import torch.nn.functional as F

from fla.ops._entry import (beta_option, expect_shape, fused_recurrent, no_head_first, ones_like_heads, refuse,
                            state_v_first_option, tensor)
from fla.ops.gated_delta_rule.variant import gated_delta_rule_variant


def _gate_shapes(g, A_log, dt_bias, HV):
    """Checks of the in-kernel gate's inputs: g [B, T, HV], A_log [HV], dt_bias [HV] or None."""
    tensor("g", g, 3, "[B, T, HV] (the raw gate input)")
    expect_shape("A_log", A_log, (HV,), f"[HV] = [{HV}]")
    if dt_bias is not None:
        expect_shape("dt_bias", dt_bias, (HV,), f"[HV] = [{HV}]")


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None, initial_state=None,
                                     output_final_state=False, use_qk_l2norm_in_kernel=False,
                                     use_gate_in_kernel=False, A_log=None, dt_bias=None,
                                     use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, state_v_first=False,
                                     cu_seqlens=None, *, transpose_state_layout=None, head_first=False):
    """Gated DeltaNet, token by token: S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T.

    g [B, T, HV] is the log decay, or with ``use_gate_in_kernel`` the raw input of
    g = -exp(A_log) softplus(g + dt_bias) (A_log [HV] required, dt_bias [HV], None means 0;
    both refused without ``use_gate_in_kernel``). A per-key log decay ``gk`` [B, T, HV, K]
    gives KDA's transition; with ``g`` too the decays multiply, as in FLA (the gate acts on
    ``g`` only). beta [B, T, HV] (ones when None), optionally through sigmoid (x2 with
    ``allow_neg_eigval``) in the kernel. Not supported: ``gv``, per-value beta [B, T, HV, V].
    ``transpose_state_layout`` is FLA's deprecated name of ``state_v_first``.
    """
    no_head_first(head_first)
    refuse("gv", gv, "value-side gates are not in the recurrence IR yet")
    state_v_first = state_v_first_option(state_v_first, transpose_state_layout)
    if gk is not None:
        # the checks of gated_delta_rule_variant, which the per-key path below does not reach
        beta_option(use_beta_sigmoid_in_kernel, allow_neg_eigval)
        HV = tensor("v", v, 4, "[B, T, HV, V]").shape[2]
        beta = ones_like_heads(v) if beta is None else beta
        if use_gate_in_kernel:
            if g is None or A_log is None:
                raise ValueError("`g` (the raw gate input) and `A_log` [HV] must be given when "
                                 "`use_gate_in_kernel=True`")
            _gate_shapes(g, A_log, dt_bias, HV)
        for name, x in (("A_log", A_log), ("dt_bias", dt_bias)):
            if x is not None and not use_gate_in_kernel:
                raise ValueError(f"`{name}` takes effect only with `use_gate_in_kernel=True`")
    if gk is not None:
        # KDA's transition with the log decay gk (+ g per head, gated here in PyTorch when asked)
        tensor("gk", gk, 4, "[B, T, HV, K]")
        if g is not None:
            tensor("g", g, 3, "[B, T, HV]")
            if tuple(g.shape) != tuple(gk.shape[:3]):
                raise ValueError(f"`g` must have shape [B, T, HV] = {list(gk.shape[:3])} (from `gk`), "
                                 f"got {tuple(g.shape)}")
            if use_gate_in_kernel:
                bias = dt_bias.float() if dt_bias is not None else 0.0
                g = -torch.exp(A_log.float()) * F.softplus(g.float() + bias)
            gk = gk + g.unsqueeze(-1)
        from fla.ops.kda import fused_recurrent_kda
        return fused_recurrent_kda(q, k, v, gk, beta, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state,
                                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                                   use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
                                   allow_neg_eigval=allow_neg_eigval, state_v_first=state_v_first,
                                   cu_seqlens=cu_seqlens)
    variant, inputs = gated_delta_rule_variant(v, g, beta, use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias,
                                               use_beta_sigmoid_in_kernel, allow_neg_eigval)
    return fused_recurrent(variant, q, k, v, inputs, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                           state_v_first=state_v_first)
