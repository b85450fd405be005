"""Run a generated op: Gated DeltaNet token by token, forward and backward.

On a machine without a GPU this runs the Triton kernels in Triton's interpreter.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule  # noqa: E402

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
B, T, H, HV, K, V = 2, 64, 2, 4, 64, 64
q = torch.randn(B, T, H, K, device=device, dtype=dtype, requires_grad=True)
k = torch.randn(B, T, H, K, device=device, dtype=dtype, requires_grad=True)
v = torch.randn(B, T, HV, V, device=device, dtype=dtype, requires_grad=True)
g = torch.randn(B, T, HV, device=device, requires_grad=True)        # raw gate input
beta = torch.randn(B, T, HV, device=device, requires_grad=True)     # raw beta input
A_log = torch.zeros(HV, device=device, requires_grad=True)
dt_bias = torch.zeros(HV, device=device, requires_grad=True)

o, state = fused_recurrent_gated_delta_rule(
    q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=A_log,
    dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True, output_final_state=True,
)
(o.float().square().sum() + state.square().sum()).backward()
print(f"o {tuple(o.shape)} {o.dtype}, final state {tuple(state.shape)} {state.dtype}")
print(f"grad norms: q {q.grad.norm():.3f}  g {g.grad.norm():.3f}  A_log {A_log.grad.norm():.3f}  "
      f"dt_bias {dt_bias.grad.norm():.3f}")
