"""GPU diagnosis of the chunked kernels: chunked against recurrent (the GPU-green path) over a
grid of shapes, chunk sizes, dtypes and initial states; prints the relative error of o and the
final state, and of dq/dk/dv, one line per case. Not a test: a tool to find which knob breaks.

    python tests/diagnose_chunk.py [variant ...]   # the full table (stops at a CUDA fault)
    python tests/diagnose_chunk.py --case NAME      # one of NAMED
    python tests/diagnose_chunk.py --grid I         # GRID from case I (tests/diagnose_chunk_tiles.sh)
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback

import torch

from flagen.ir.library import BUILTINS
from flagen.runtime.op import get_op

torch.manual_seed(0)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / max(b.double().abs().max().item(), 1.0)).item()


def case(variant, B, T, H, HV, K, V, h0, bt, dtype, cu=None):
    spec = BUILTINS[variant]
    dev = os.environ.get("DEV", "cuda")
    q, k = (torch.randn(B, T, H, K, device=dev).to(dtype) for _ in range(2))
    v = torch.randn(B, T, HV, V, device=dev).to(dtype)
    inputs = {}
    for i in spec.inputs:
        shp = {"token": (B, T, HV), "token_key": (B, T, HV, K), "head": (HV,), "head_key": (HV, K)}[i.shape.value]
        x = torch.rand(shp, device=dev)
        inputs[i.name] = -(0.001 + 0.5 * x) if (i.shape.per_token or i.name == "g_gamma") else x * 2 - 1
    N = B if cu is None else len(cu) - 1
    cu_t = torch.tensor(cu, device=dev, dtype=torch.int32) if cu is not None else None
    s0 = torch.randn(N, HV, K, V, device=dev) if h0 else None
    leaves = [q, k, v]
    for x in leaves:
        x.requires_grad_(True)
    op = get_op(variant)
    o1, ht1 = op.chunk(q, k, v, initial_state=s0, output_final_state=True, cu_seqlens=cu_t, chunk_size=bt, **inputs)
    o2, ht2 = op(q, k, v, initial_state=s0, output_final_state=True, cu_seqlens=cu_t, **inputs)
    do = torch.randn_like(o1)
    g1 = torch.autograd.grad((o1 * do).sum(), leaves)
    g2 = torch.autograd.grad((o2 * do).sum(), leaves)
    errs = [rel(o1, o2), rel(ht1, ht2)] + [rel(a, b) for a, b in zip(g1, g2)]
    bad = max(errs) > 0.05
    print(f"{'BAD ' if bad else 'ok  '}{variant:12s} B{B} T{T} H{H} HV{HV} K{K} V{V} h0={int(h0)} BT={bt:3d} "
          f"{str(dtype)[6:]:8s} cu={cu} o={errs[0]:.1e} ht={errs[1]:.1e} dq={errs[2]:.1e} dk={errs[3]:.1e} "
          f"dv={errs[4]:.1e}", flush=True)


SHAPES = [
    (2, 37, 1, 2, 48, 100, None),
    (2, 37, 1, 1, 48, 100, None),
    (1, 37, 1, 1, 32, 16, None),
    (1, 64, 1, 1, 64, 64, None),
    (1, 130, 1, 1, 32, 16, None),
    (1, 130, 1, 1, 32, 16, [0, 1, 37, 37, 130]),
    (1, 150, 1, 1, 20, 24, [0, 61, 61, 150]),
]
NAMED = {  # single cases: `python tests/diagnose_chunk.py --case NAME`
    "dq_v100": ("simple_gla", 2, 37, 1, 1, 48, 100, False, 64, torch.float32, None),
    "fwd_v16": ("simple_gla", 1, 37, 1, 1, 32, 16, False, 64, torch.bfloat16, None),
    "dv_v16": ("linear_attn", 1, 37, 1, 1, 32, 16, False, 64, torch.bfloat16, None),
    "varlen": ("linear_attn", 1, 130, 1, 1, 32, 16, True, 64, torch.bfloat16, [0, 1, 37, 37, 130]),
    "gqa_h0": ("retention", 2, 37, 1, 2, 48, 100, True, 64, torch.bfloat16, None),
}
# `--grid I`: the tile-robustness grid from case I on (a crash ends the process; the caller
# restarts it past the crashed case)
GRID = [(v, B, T, 1, HV, K, V, True, bt, torch.bfloat16, cu)
        for v in ("simple_gla", "gla", "rwkv6")
        for (B, T, HV, K, V, cu) in [(2, 37, 2, 48, 100, None), (1, 130, 1, 32, 16, [0, 1, 37, 37, 130]),
                                     (2, 100, 1, 64, 64, None), (1, 150, 2, 128, 128, None), (1, 90, 1, 256, 256, None),
                                     (1, 70, 1, 100, 32, None)]
        for bt in (64,)]
if sys.argv[1:2] == ["--grid"]:
    for i in range(int(sys.argv[2]), len(GRID)):
        print(f"#{i}", end=" ", flush=True)
        try:
            case(*GRID[i])
        except Exception as e:
            print("CRASH", GRID[i][:7], repr(e)[:80], flush=True)
            sys.exit(3)
    sys.exit(0)
if sys.argv[1:2] == ["--case"]:
    try:
        case(*NAMED[sys.argv[2]])
    except Exception as e:
        print("CRASH", sys.argv[2], repr(e)[:120])
    sys.exit(0)
variants = sys.argv[1:] or ["linear_attn", "simple_gla", "gla"]
for variant, shape, h0, bt, dtype in itertools.product(variants, SHAPES, [False, True], [16, 64],
                                                       [torch.float32, torch.bfloat16]):
    B, T, H, HV, K, V, cu = shape
    try:
        case(variant, B, T, H, HV, K, V, h0, bt, dtype, cu)
    except Exception:  # a CUDA fault poisons the context: report it and stop
        print("ERR", variant, shape, h0, bt, dtype, flush=True)
        traceback.print_exc()
        sys.exit(1)
