"""Calling generated kernels: checks, allocation, launch, autograd, decoding.

A generated module carries its kernels (``KERNELS``) and the metadata the runtime needs
(``INPUTS``: raw inputs as (name, shape) in kernel-argument order, ``GRADS``, ``NORMALIZE``:
whether the kernels take the normaliser's buffers), so calling a built-in needs no IR, Jinja
or sympy.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import torch

from flagen.runtime import checks
from flagen.runtime import chunked_delta, packing, tuning
from flagen.runtime.chunked import _Chunked, no_double_backward
from flagen.runtime.chunked_delta import _ChunkedDelta
from flagen.runtime.gradients import raw_gradients
from flagen.runtime.intmath import cdiv, next_power_of_2
from flagen.runtime.l2norm import l2norm
from flagen.runtime.normalizer import divisor_gradients

DEFAULT_CHECKPOINT_INTERVAL = 64


@lru_cache(maxsize=None)
def _tiles(K: int, V: int, budget: int) -> tuple[int, int, int]:
    """BK covers all of K (the delta rule and low-rank transitions mix keys); BV keeps the
    [BK, BV] fp32 blocks a program holds within ``budget`` elements."""
    BK = max(16, next_power_of_2(K))
    BV = min(max(16, next_power_of_2(V)), max(16, budget // BK))
    return BK, BV, cdiv(V, BV)


class _Recurrent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, meta, q, k, v, h0, z0, *raw):
        kern = op.module.KERNELS
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        N, cu, lens = meta["N"], meta["cu"], meta["lens"]
        BK, BV, NV = _tiles(K, V, 8192)
        needs_grad = meta["needs_grad"]
        CKPT = meta["ckpt_interval"]
        ckpt_counts = [cdiv(n, CKPT) for n in lens]
        offsets = packing.device_indices(
            ("checkpoints", tuple(lens), CKPT, str(q.device)),
            lambda: torch.tensor([0] + ckpt_counts, dtype=torch.int64).cumsum(0).to(q.device))
        ckpt = q.new_empty(max(1, sum(ckpt_counts)), HV, K, V, dtype=torch.float32) if needs_grad else None
        o = torch.empty_like(v)
        ht = q.new_empty(N, HV, K, V, dtype=torch.float32) if meta["output_final_state"] else None
        zt = zckpt = den = None
        norm = {}
        if op.module.NORMALIZE:  # the sum of keys beside the state; every token's divisor
            f32 = dict(dtype=torch.float32, device=q.device)
            zt = torch.empty(N, HV, K, **f32) if ht is not None else None
            zckpt = torch.empty(max(1, sum(ckpt_counts)), HV, K, **f32) if needs_grad else None
            den = torch.empty(B, T, HV, **f32)
            norm = dict(z0=z0, zt=zt, zckpt=zckpt, den=den, USE_Z0=z0 is not None)
        kern["fwd"][(N * HV, NV)](
            q, k, v, *op.kernel_inputs(raw, meta),
            o, h0, ht, ckpt, offsets, cu,
            meta["scale"], T, **norm,
            H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, CKPT=CKPT,
            USE_H0=h0 is not None, STORE_HT=ht is not None, STORE_CKPT=needs_grad, IS_VARLEN=cu is not None,
        )
        if needs_grad:
            ctx.save_for_backward(q, k, v, h0, z0, ckpt, offsets, cu, o if den is not None else None, den, zckpt,
                                  *raw)
            ctx.op, ctx.meta = op, meta
        return o, ht, zt

    @staticmethod
    def backward(ctx, do, dht, dzt):
        no_double_backward()
        op, meta = ctx.op, ctx.meta
        q, k, v, h0, z0, ckpt, offsets, cu, o, den, zckpt, *raw = ctx.saved_tensors
        B, T, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        N, NT = meta["N"], B * T
        BK, BV, NV = _tiles(K, V, 4096)
        CKPT = meta["ckpt_interval"]
        f32 = dict(dtype=torch.float32, device=q.device)
        scratch = torch.empty(N * HV * NV, CKPT, BK, BV, **f32)
        dq = torch.empty(NV, NT, HV, K, **f32)
        dk = torch.empty(NV, NT, HV, K, **f32)
        dv = torch.empty_like(v)
        grads = {}
        for name, kind in op.module.INPUTS:
            if name in op.module.GRADS:
                shape = {"token": (NV, NT, HV), "token_key": (NV, NT, HV, K),
                         "head": (NV, N, HV), "head_key": (NV, N, HV, K)}[kind]
                grads[name] = torch.empty(shape, **f32)
        dh0 = torch.empty(N, HV, K, V, **f32) if h0 is not None else None
        dz0 = torch.empty(N, HV, K, **f32) if z0 is not None else None
        norm = {}
        if op.module.NORMALIZE:  # the gradients of the undivided output and of the divisors
            do, w = divisor_gradients(op.module, do, o, den, meta["scale"])
            norm = dict(w=w, zckpt=zckpt, dzt=dzt.contiguous() if dzt is not None else None, dz0=dz0,
                        USE_DZT=dzt is not None, STORE_DZ0=dz0 is not None)
        op.module.KERNELS["bwd"][(N * HV, NV)](
            q, k, v, *op.kernel_inputs(raw, meta),
            do.contiguous(), dht.contiguous() if dht is not None else None, dq, dk, dv,
            *grads.values(), dh0,
            ckpt, offsets, scratch, cu,
            meta["scale"], T, NT, N, **norm,
            H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, NV=NV, CKPT=CKPT,
            USE_DHT=dht is not None, STORE_DH0=dh0 is not None, IS_VARLEN=cu is not None,
        )
        G = HV // H
        dq = dq.sum(0).view(B, T, H, G, K).sum(3).to(q.dtype)
        dk = dk.sum(0).view(B, T, H, G, K).sum(3).to(k.dtype)
        # partial gradients per V tile (and, for per-head inputs, per sequence)
        raw_grads = raw_gradients(op, raw, grads,
                                  {"token": (0,), "token_key": (0,), "head": (0, 1), "head_key": (0, 1)})
        dh0 = dh0.to(h0.dtype) if dh0 is not None else None
        dz0 = dz0.to(z0.dtype) if dz0 is not None else None
        return (None, None, dq, dk, dv, dh0, dz0, *raw_grads)


class RecurrentOp:
    """The op of one generated module: ``op(q, k, v, scale=None, initial_state=None,
    output_final_state=False, cu_seqlens=None, reverse=False, **inputs) -> (o, final_state)``.

    q, k [B, T, H, K]; v [B, T, HV, V]; inputs by their shapes (``op.inputs``);
    initial_state [N, HV, K, V]; o [B, T, HV, V]; final_state [N, HV, K, V] in fp32.
    With the normaliser (linear attention), states are ``(S, z)`` pairs, z [N, HV, K].
    """

    def __init__(self, module: ModuleType):
        self.module = module
        self.name = module.NAME
        self.inputs = dict(module.INPUTS)

    def __repr__(self):
        return f"RecurrentOp({self.name}, inputs={self.inputs})"

    def kernel_inputs(self, raw, meta):
        """Kernel arguments for the raw inputs: tensors in order, per-call constants by value."""
        tensors = iter(raw)
        return [meta["consts"][name] if kind == "const" else next(tensors) for name, kind in self.module.INPUTS]

    # --- checks ----------------------------------------------------------------------------
    def _check(self, q, k, v, inputs, initial_state=None, cu_seqlens=None, lead=("B", "T")):
        """Shapes, dtypes and devices of a call's tensors; ``lead`` names their leading dims:
        (B, T) for a sequence, (N,) or (N, 1) for a decode step (so errors show the user's
        shapes). Returns (N, sequence lengths) for a sequence."""
        nl, names = len(lead), ", ".join(lead)
        checks.tensor("q", q, ndim=nl + 2)
        dev = q.device
        checks.tensor("k", k, ndim=nl + 2, device=dev)
        checks.tensor("v", v, ndim=nl + 2, device=dev)
        P, (H, K) = tuple(q.shape[:nl]), q.shape[nl:]
        if k.shape != q.shape:  # (the messages are formatted only for a mismatch: the hot path of decoding)
            checks.shape("k", k, q.shape, f"[{names}, H, K]")
        if k.dtype != q.dtype or v.dtype != q.dtype:
            raise TypeError(f"`q`, `k` and `v` must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        if tuple(v.shape[:nl]) != P:
            raise ValueError(f"`v` must have shape [{names}, HV, V] with {names} = {P}, got {tuple(v.shape)}")
        HV, V = v.shape[nl:]
        if H == 0 or HV % H != 0:
            raise ValueError(f"`v` has HV={HV} heads, which must be a multiple of q's H={H}")
        if K == 0 or V == 0 or K > checks.MAX_HEAD_DIM or V > checks.MAX_HEAD_DIM:
            raise ValueError(f"head dims K={K}, V={V} must be in 1..{checks.MAX_HEAD_DIM}")
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise TypeError(f"{self.name}: unexpected input(s) {sorted(unknown)}; takes {sorted(self.inputs)}")
        for name, kind in self.module.INPUTS:
            if name not in inputs or inputs[name] is None:
                raise TypeError(f"{self.name}: missing input `{name}` ({kind})")
            x = inputs[name]
            if kind == "const":
                if isinstance(x, torch.Tensor) or not isinstance(x, (int, float)):
                    raise TypeError(f"`{name}` must be a Python number")
                continue
            checks.tensor(name, x, device=dev)
            expected = (P + (HV,) if kind == "token" else P + (HV, K) if kind == "token_key" else
                        (HV,) if kind == "head" else (HV, K))
            if tuple(x.shape) != expected:
                what = {"token": f"[{names}, HV]", "token_key": f"[{names}, HV, K]", "head": "[HV]", "head_key": "[HV, K]"}
                checks.shape(name, x, expected, what[kind])
        if lead != ("B", "T"):
            return None, None
        B, T = P
        lens = checks.cu_seqlens(cu_seqlens, B, T, dev)
        N = B if lens is None else len(lens) - 1
        if initial_state is not None:
            s = initial_state[0] if isinstance(initial_state, tuple) else initial_state
            checks.tensor("initial_state", s, ndim=4, device=dev)
            checks.shape("initial_state", s, (N, HV, K, V), "[N, HV, K, V]")
            if isinstance(initial_state, tuple):
                checks.tensor("initial_state[1]", initial_state[1], ndim=3, device=dev)
                checks.shape("initial_state[1]", initial_state[1], (N, HV, K), "[N, HV, K]")
        seq_lens = [T] * B if lens is None else [b - a for a, b in zip(lens, lens[1:])]
        return N, seq_lens

    # --- calls -----------------------------------------------------------------------------
    def __call__(self, q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                 reverse=False, checkpoint_interval=DEFAULT_CHECKPOINT_INTERVAL, **inputs):
        """Token by token (the fused recurrent kernels): decoding-friendly, any length.
        ``checkpoint_interval``: tokens between the states the forward keeps for the backward
        (a positive int; memory against recomputation)."""
        return self._run(_Recurrent, dict(ckpt_interval=checks.positive_int("checkpoint_interval",
                                                                            checkpoint_interval)),
                         q, k, v, scale, initial_state, output_final_state, cu_seqlens, reverse, inputs)

    def chunk(self, q, k, v, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
              reverse=False, chunk_size=None, **inputs):
        """Chunk by chunk (the chunked kernels): for training and prefill. Same arguments and
        results as calling the op; ``chunk_size`` is 16, 32, 64 or 128 tokens, or None for
        each pass's default (``flagen.runtime.chunked.chunk_sizes``)."""
        if not self.module.CHUNKED:
            raise NotImplementedError(f"{self.name}: no chunked kernels yet for this recurrence (a low-rank "
                                      "transition without a per-key decay or with the delta rule, or the delta "
                                      "rule with a bonus, normaliser or per-key beta); call the op (fused "
                                      "recurrent) instead")
        wy = getattr(self.module, "WY", False)  # the delta rule's / low rank's WY-form kernels
        sizes = chunked_delta.CHUNK_SIZES if wy else (16, 32, 64, 128)
        if chunk_size is not None and (not checks.integer(chunk_size) or chunk_size not in sizes):
            raise ValueError(f"`chunk_size` must be one of {sizes} (or None) for {self.name}, got {chunk_size!r}")
        return self._run(_ChunkedDelta if wy else _Chunked, dict(chunk_size=chunk_size and int(chunk_size)),
                         q, k, v, scale, initial_state, output_final_state, cu_seqlens, reverse, inputs)

    def _run(self, function, options, q, k, v, scale, initial_state, output_final_state, cu_seqlens, reverse,
             inputs):
        N, seq_lens = self._check(q, k, v, inputs, initial_state, cu_seqlens)
        if function is not _Recurrent:
            tuning.ensure(q.device)  # the GPU's launch options, once per process
        if "ckpt_interval" in options:
            # an interval past the longest sequence means one checkpoint per sequence: cap it, as
            # the backward's scratch holds ckpt_interval states (2**31 would not fit in memory)
            cap = max(DEFAULT_CHECKPOINT_INTERVAL, next_power_of_2(max(seq_lens, default=1)))
            options = dict(options, ckpt_interval=min(options["ckpt_interval"], cap))
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens.contiguous()  # the kernels index it as a flat array
        scale = checks.scale_value(scale, q.shape[-1])
        z0 = None
        if isinstance(initial_state, tuple):
            if not self.module.NORMALIZE:
                raise TypeError("`initial_state` must be a tensor (a (state, z) pair is for the normaliser)")
            initial_state, z0 = initial_state
        if reverse:
            flip = _Flip(seq_lens, cu_seqlens is not None, q.shape[1], q.device)
            q, k, v = flip(q), flip(k), flip(v)
            inputs = {n: flip(x) if self.inputs[n].startswith("token") else x for n, x in inputs.items()}
        low_precision = None
        if function is not _Recurrent and q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # Triton's interpreter computes tl.dot on bf16 operands wrongly: compute in fp32
            low_precision, q, k, v = q.dtype, q.float(), k.float(), v.float()
        if function is not _Recurrent and self.module.QK_L2NORM:
            # the chunked kernels take q and k as they are: normalise them here (autograd chains)
            q, k = l2norm(self.module, q), l2norm(self.module, k)
        raw = [inputs[n] for n, kind in self.module.INPUTS if kind != "const"]
        consts = {n: float(inputs[n]) for n, kind in self.module.INPUTS if kind == "const"}
        tensors = (q, k, v, initial_state, z0, *raw)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        if function is _Recurrent and q.shape[1] == 1 and cu_seqlens is None and not needs_grad:
            return self._one_token(q, k, v, inputs, scale, initial_state, z0, output_final_state)
        meta = dict(N=N, lens=seq_lens, cu=cu_seqlens, scale=scale, consts=consts, needs_grad=needs_grad,
                    output_final_state=bool(output_final_state), **options)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        h0 = initial_state.contiguous() if initial_state is not None else None
        raw = [x.contiguous() for x in raw]
        z0 = z0.contiguous() if z0 is not None else None
        o, ht, zt = function.apply(self, meta, q, k, v, h0, z0, *raw)
        if self.module.NORMALIZE and ht is not None:
            ht = (ht, zt)
        if low_precision is not None:
            o = o.to(low_precision)
        if reverse:
            o = flip(o)
        return o, ht

    def _one_token(self, q, k, v, inputs, scale, initial_state, z0, output_final_state):
        """One token per sequence with nothing to differentiate (decoding through FLA's API):
        the decode kernel, reading the initial state and writing the final one elsewhere (each
        state read and written once, as FLA's kernel does; the recurrent kernel's path costs
        more for one token). q, k [B, 1, H, K]; v [B, 1, HV, V]: (o, final state)."""
        B, _, H, K = q.shape
        HV, V = v.shape[2], v.shape[3]
        f32 = dict(dtype=torch.float32, device=q.device)
        h0 = initial_state.to(torch.float32).contiguous() if initial_state is not None else None
        out = torch.empty(B, HV, K, V, **f32)
        out_z = torch.empty(B, HV, K, **f32) if self.module.NORMALIZE else None
        if self.module.NORMALIZE and h0 is not None:
            z0 = z0.to(torch.float32).contiguous() if z0 is not None else torch.zeros(B, HV, K, **f32)
        # the token axis stays: [B, 1, ...] rows are [B, ...] rows (no slicing on the hot path)
        o = self._step(q, k, v, inputs, scale, h0, z0, out=out, out_z=out_z)
        final = None
        if output_final_state:
            final = (out, out_z) if self.module.NORMALIZE else out
        return o, final

    def decode(self, q, k, v, state, scale=None, state_indices=None, check_indices=True, **inputs):
        """One generation step: q, k [N, H, K] (or [N, 1, H, K]), v [N, HV, V] (or [N, 1, HV, V]),
        per-token inputs [N, HV(, K)] (or with the 1); updates ``state`` [S, HV, K, V] (fp32)
        in place at slots ``state_indices`` [N] (default 0..N-1). Returns o shaped like v.
        With the normaliser (linear attention), ``state`` is an (S, z) pair, z [S, HV, K] fp32.

        A negative slot skips its sequence (its o is 0, no state is touched). With
        ``check_indices`` (the default) slots past S-1 and repeated slots raise a ValueError;
        that reads ``state_indices`` on the host (a device sync). ``check_indices=False``
        (for CUDA graphs) reads nothing back: the kernel skips any slot outside 0..S-1 as it
        does negative ones, and repeated slots are the caller's to avoid (they race).
        Decoding does not track gradients: an input that requires grad while grad mode is on
        raises; run it under ``torch.no_grad()``."""
        if torch.is_grad_enabled():
            states = state if isinstance(state, tuple) else (state,)
            for name, x in (("q", q), ("k", k), ("v", v), *inputs.items(), *(("state", s) for s in states)):
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    raise RuntimeError(f"decode does not track gradients, but `{name}` requires grad: call it "
                                       "under torch.no_grad(), or use the op itself to train")
        token_axis = isinstance(q, torch.Tensor) and q.dim() == 4
        self._check(q, k, v, inputs, lead=("N", "1") if token_axis else ("N",))
        if token_axis:
            if q.shape[1] != 1:
                raise ValueError(f"`q` for decode must have one token, got shape {tuple(q.shape)}")
            q, k, v = q[:, 0], k[:, 0], v[:, 0]
            inputs = {n: x[:, 0] if self.inputs[n].startswith("token") else x for n, x in inputs.items()}
        N, H, K = q.shape
        HV, V = v.shape[1], v.shape[2]
        state_z = None
        if self.module.NORMALIZE:
            if not isinstance(state, tuple) or len(state) != 2:
                raise TypeError("`state` must be an (S, z) pair for the normaliser: S [S, HV, K, V], z [S, HV, K]")
            state, state_z = state
        elif isinstance(state, tuple):
            raise TypeError("`state` must be a tensor (an (S, z) pair is for the normaliser)")
        checks.tensor("state", state, ndim=4, device=q.device, dtypes=(torch.float32,))
        if tuple(state.shape[1:]) != (HV, K, V) or not state.is_contiguous():
            raise ValueError(f"`state` must be a contiguous fp32 tensor [S, {HV}, {K}, {V}], got {tuple(state.shape)}")
        S = state.shape[0]
        if state_z is not None:
            checks.tensor("state[1]", state_z, ndim=3, device=q.device, dtypes=(torch.float32,))
            if tuple(state_z.shape) != (S, HV, K) or not state_z.is_contiguous():
                raise ValueError(f"`state[1]` (z) must be a contiguous fp32 tensor [{S}, {HV}, {K}], "
                                 f"got {tuple(state_z.shape)}")
        if state_indices is not None:
            checks.tensor("state_indices", state_indices, ndim=1, device=q.device, dtypes=(torch.int32, torch.int64))
            state_indices = state_indices.contiguous()  # the kernel indexes it as a flat array
            if state_indices.numel() != N:
                raise ValueError(f"`state_indices` must have N={N} entries, got {state_indices.numel()}")
            if check_indices:
                checks.state_slots(state_indices.tolist(), S)
        elif S < N:
            raise ValueError(f"`state` has {S} slots for N={N} sequences")
        o = self._step(q, k, v, inputs, checks.scale_value(scale, K), state, state_z, state_indices)
        return o.unsqueeze(1) if token_axis else o

    def _step(self, q, k, v, inputs, scale, state, state_z, state_indices=None, out=None, out_z=None):
        """Launch the decode kernel on checked arguments (q, k [N, H, K], v [N, HV, V], inputs
        [N, HV(, K)]; each may keep a token axis of 1 after N: the kernel reads rows):
        ``state`` (``state_z``) updated in place, or with ``out`` [N, HV, K, V] (``out_z``
        [N, HV, K]) only read (None: the states start at 0) and the new states written
        there. Returns o shaped like v."""
        N, (H, K), (HV, V) = q.shape[0], q.shape[-2:], v.shape[-2:]
        raw = [inputs[n].contiguous() for n, kind in self.module.INPUTS if kind != "const"]
        meta = {"consts": {n: float(inputs[n]) for n, kind in self.module.INPUTS if kind == "const"}}
        BK, BV, NV = _tiles(K, V, 8192)
        norm = {}
        load = state is not None
        if self.module.NORMALIZE:  # one program per state head reads and writes z
            BV, NV = max(16, next_power_of_2(V)), 1
            norm = dict(state_z=state_z if load else out_z, state_z_out=out_z)
        o = v.new_empty(v.shape)  # (empty_like would keep a strided v's layout; the kernel writes rows)
        # (no state to read: the kernel forms its addresses from ``out`` and loads nothing)
        self.module.KERNELS["decode"][(N * HV, NV)](
            q.contiguous(), k.contiguous(), v.contiguous(), *self.kernel_inputs(raw, meta),
            o, state if load else out, state_indices, scale, state.shape[0] if load else N, state_out=out, **norm,
            H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, USE_INDICES=state_indices is not None,
            LOAD_STATE=load, OUT_OF_PLACE=out is not None,
        )
        return o


class _Flip:
    """Reverse time within each sequence (for ``reverse=True``), differentiably."""

    def __init__(self, seq_lens, varlen, T, device):
        if varlen:
            idx, start = [], 0
            for n in seq_lens:
                idx.extend(range(start + n - 1, start - 1, -1))
                start += n
            self.index = torch.tensor(idx, dtype=torch.long, device=device)
        else:
            self.index = torch.arange(T - 1, -1, -1, device=device)

    def __call__(self, x):
        return x.index_select(1, self.index)


_ops: dict = {}


def get_op(spec_or_name) -> RecurrentOp:
    """The op of a built-in variant (by name) or of a user's spec (through the cache)."""
    key = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.ir_text()
    op = _ops.get(key)
    if op is None:
        if isinstance(spec_or_name, str):
            from flagen.codegen.build import load_builtin
            module = load_builtin(spec_or_name)
        else:
            from flagen.codegen import cache
            module = cache.load(spec_or_name)
        op = _ops[key] = RecurrentOp(module)
    return op
