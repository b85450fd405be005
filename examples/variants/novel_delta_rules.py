"""Two recurrences that no library ships, each defined in a few lines of IR.

Build them with `flagen build examples/variants/novel_delta_rules.py`; call them through
`flagen.compile(spec)` (see README).
"""

import sympy as sp

from flagen.ir import Decay, Input, Recurrence, Shape, sigmoid, softplus, symbols

# A delta rule whose write strength is a vector over keys: beta_t in (0, 1)^K, so
# S_t = S_{t-1} + (beta_t * k_t) (v_t - S_{t-1}^T k_t)^T, each key channel learning at its own rate.
beta = Input("beta", Shape.TOKEN_KEY, "pre-sigmoid write strength per key [B, T, HV, K]")
(b,) = symbols(beta)
delta_rule_key_beta = Recurrence(
    name="delta_rule_key_beta",
    inputs=(beta,),
    delta=True,
    beta=sigmoid(b),
    qk_l2norm=True,
    doc="delta rule with a per-key beta = sigmoid(beta_t)",
)

# A gated delta rule whose decay has a learned per-head floor: g_t = -softplus(floor_h) * sigmoid(a_t),
# so each head's log decay stays in (-softplus(floor_h), 0) and the floor itself is trained.
a, floor_, braw = Input("a", Shape.TOKEN), Input("floor", Shape.HEAD), Input("beta", Shape.TOKEN)
xa, xf, xb = symbols(a, floor_, braw)
gated_delta_rule_learned_floor = Recurrence(
    name="gated_delta_rule_learned_floor",
    inputs=(a, floor_, braw),
    decay=Decay.SCALAR,
    gate=-softplus(xf) * sigmoid(xa),
    delta=True,
    beta=sigmoid(xb),
    qk_l2norm=True,
    doc="gated delta rule, g = -softplus(floor_h) sigmoid(a_t), beta = sigmoid(beta_t)",
)

VARIANTS = [delta_rule_key_beta, gated_delta_rule_learned_floor]
