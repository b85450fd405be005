"""FLOP and byte conventions of the chunked ops, and the GPU's ceilings measured in the run, so
that a timing can be read against its floor: max(FLOP / peak FLOP/s, bytes / peak bandwidth).

Conventions (per head, T tokens, chunk size C, head dims K and V; what the chunked algorithm
computes, full tiles counted as computed, the causal mask's saving not subtracted):

- decay families, forward: 2 T C (K + V) for the in-chunk scores and their product with v,
  plus 4 T K V for the reads of and updates to the state;
- delta rule (WY form), forward: that, plus 2 T C K for k k^T, 2 T C (K + V) for w and u, 2 T K V
  for v_new and T C^2 / 3 for the triangular inverse;
- forward + backward: 3x the forward (the usual convention: the backward is twice the forward).

Bytes are the op's minimal traffic in bf16: q, k, v and the per-token gates read, o written (the
backward: those again with do read and every gradient written). States that a kernel writes
and reads back are not in the floor: they are what a faster kernel saves.
"""

from __future__ import annotations

CHUNK = 64
DELTA_OPS = ("chunk_delta_rule", "chunk_gated_delta_rule", "chunk_kda", "chunk_rwkv7")


def parse_shape(shape: str) -> tuple[int, int, int, int]:
    """"B4_T2048_H16_D128" -> (4, 2048, 16, 128)."""
    B, T, H, D = (int(part[1:]) for part in shape.split("_"))
    return B, T, H, D


def forward_flops(op: str, B: int, T: int, H: int, D: int, C: int = CHUNK) -> float:
    K = V = D
    flops = 2 * T * C * (K + V) + 4 * T * K * V
    if op.split("+")[0] in DELTA_OPS:
        flops += 2 * T * C * K + 2 * T * C * (K + V) + 2 * T * K * V + T * C * C / 3
    return float(B * H * flops)


def flops(op: str, shape: str, backward: bool) -> float:
    f = forward_flops(op, *parse_shape(shape))
    return 3 * f if backward else f


def gate_values(op: str, D: int) -> int:
    """Per-token, per-head gate and beta values the op reads (beyond q, k, v)."""
    name = op.split("+")[0]
    per_key = name in ("chunk_gla", "chunk_rwkv6", "chunk_kda", "chunk_rwkv7")
    values = D if per_key else (1 if name in ("chunk_simple_gla", "chunk_gated_delta_rule") else 0)
    if name in DELTA_OPS and name != "chunk_rwkv7":
        values += 1  # beta
    if name == "chunk_rwkv7":
        values += 2 * D  # a, b
    return values


def bytes_moved(op: str, shape: str, backward: bool) -> float:
    B, T, H, D = parse_shape(shape)
    per_token = 3 * D + gate_values(op, D) + D  # q, k, v, gates read; o written
    if backward:
        per_token += 3 * D + gate_values(op, D) + D + 3 * D + gate_values(op, D)  # again, do, gradients
    return 2.0 * B * T * H * per_token


def floor_ms(op: str, shape: str, backward: bool, ceilings: dict) -> float | None:
    """The op's floor in ms under ``ceilings`` (tflops, gbps), or None without them."""
    if not ceilings or not ceilings.get("tflops") or not ceilings.get("gbps"):
        return None
    compute = flops(op, shape, backward) / (ceilings["tflops"] * 1e12)
    memory = bytes_moved(op, shape, backward) / (ceilings["gbps"] * 1e9)
    return 1e3 * max(compute, memory)


def measure_ceilings(torch, bench) -> dict:
    """bf16 matmul TFLOP/s (8192^3) and device-to-device copy GB/s (1 GiB read + written),
    measured with ``bench`` (ms) on the current GPU: the ceilings the floors use."""
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_ms = bench(lambda: a @ b)
    x = torch.empty(1 << 29, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_ms = bench(lambda: y.copy_(x))
    return dict(tflops=round(2 * n ** 3 / (matmul_ms * 1e-3) / 1e12, 1),
                gbps=round(2 * x.numel() * x.element_size() / (copy_ms * 1e-3) / 1e9, 1))
