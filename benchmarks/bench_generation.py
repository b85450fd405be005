"""Prefill and decode tokens/s of a causal LM, ours or FLA 0.6.0's, with the same weights
(GPU; one implementation per process: both packages are named ``fla``).

    python benchmarks/bench_generation.py --impl flagen --family gla --model-dir DIR --out ours.json
    python benchmarks/bench_generation.py --impl fla --fla-path FLA_DIR --family gla --model-dir DIR --out fla.json

``flagen`` first writes a randomly initialised model of about 340M parameters (``SIZES``) to
DIR with ``save_pretrained`` if DIR holds none; ``fla`` loads that checkpoint with its own
classes (same config.json, same state_dict keys). Prefill: one forward of B prompts of T
tokens filling the cache; decode: N greedy steps of one token per sequence through it (the
argmax fed back, as generate() would). bf16; the best of ``--reps`` runs, CUDA-synchronised.
``flagen`` on a GPU also decodes with its steps replayed from CUDA graphs (``use_cuda_graph``,
as ``generate(..., use_cuda_graph=True)`` runs them): ``decode_graph_*``, and whether its tokens
equal the eager ones.
``--device cpu --tiny`` runs a tiny model on the interpreter (a check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SIZES = dict(hidden_size=1024, num_hidden_layers=24, vocab_size=32000)  # ~340M parameters with the MLPs
TINY = dict(hidden_size=32, num_hidden_layers=2, vocab_size=64)
FAMILY_ARGS = {"gla": dict(num_heads=4), "gated_deltanet": dict(num_heads=8, head_dim=128, expand_v=2),
               "retnet": dict(num_heads=8), "hgrn2": dict(num_heads=8, expand_ratio=128)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["flagen", "fla"], required=True)
    p.add_argument("--fla-path")
    p.add_argument("--family", default="gla")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.impl == "fla":
        sys.path.insert(0, args.fla_path)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import fla.models  # noqa: F401 - registers the model types

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").exists():
        if args.impl != "flagen":
            sys.exit(f"{model_dir} holds no model: run --impl flagen first")
        sizes = TINY if args.tiny else SIZES
        kw = dict(FAMILY_ARGS.get(args.family, {}))
        if args.tiny:
            kw = dict(num_heads=2, **({"head_dim": 16} if "head_dim" in kw else {}))
        config = AutoConfig.for_model(args.family, **sizes, **kw)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (args.batch, args.prompt), generator=gen).to(args.device)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def run(**step):
        """(best prefill s, best decode s, the greedy tokens [B, new_tokens])."""
        best_prefill = best_decode = float("inf")
        tokens = None
        for _ in range(args.reps):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=prompts, use_cache=True)
            sync()
            t1 = time.perf_counter()
            cache = out.past_key_values if hasattr(out, "past_key_values") and out.past_key_values is not None \
                else getattr(out, "cache", None)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            decoded = [nxt]
            for _ in range(args.new_tokens - 1):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True, **step)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                decoded.append(nxt)
            sync()
            t2 = time.perf_counter()
            best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
            tokens = torch.cat(decoded, 1)
        return best_prefill, best_decode, tokens

    graphed = None
    with torch.no_grad():
        best_prefill, best_decode, tokens = run()
        if args.impl == "flagen" and args.device == "cuda":
            graphed = run(use_cuda_graph=True)  # (the first rep captures the step)
    env = dict(impl=args.impl, device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               torch=torch.__version__, fla_file=os.path.relpath(fla.__file__, args.fla_path or os.getcwd()))
    result = dict(env=env, family=args.family, parameters=n_params, batch=args.batch, prompt=args.prompt,
                  new_tokens=args.new_tokens, prefill_s=best_prefill, decode_s=best_decode,
                  prefill_tokens_per_s=args.batch * args.prompt / best_prefill,
                  decode_tokens_per_s=args.batch * args.new_tokens / best_decode,
                  decoded=tokens[:, :16].tolist())  # to compare the two implementations' greedy tokens
    if graphed is not None:
        result.update(decode_graph_s=graphed[1], decode_graph_tokens_per_s=args.batch * args.new_tokens / graphed[1],
                      graph_tokens_equal_eager=bool(torch.equal(graphed[2], tokens)))
    print(json.dumps({k: v for k, v in result.items() if k != "decoded"}), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
