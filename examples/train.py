"""Train small language models of several families on the same text with the same budget, and
plot their loss curves.

The text is the Python standard library's own sources (on every machine, nothing to
download), read as bytes: vocabulary 256, the last 5% held out. Every family sees the same
batches in the same order.

    python examples/train.py                          # CPU: a tiny configuration, minutes
    python examples/train.py --preset gpu --device cuda   # ~100M parameters, a few hundred steps

On the CPU the kernels run through Triton's interpreter: the tiny preset trains the
transformer, GLA and the hybrid in minutes; Gated DeltaNet (``--families ...,gated_deltanet``,
its chunked WY-form kernels through the interpreter) takes longer.
    python examples/train.py --families gla,gated_deltanet --steps 50 --out train-out

Writes <out>/train_<preset>.json (per family: parameters, train and validation losses in bits
per byte, tokens/s) and, with matplotlib installed, <out>/train_<preset>.png (or later, from the
JSON: ``--replot <out>/train_<preset>.json``). tqdm, if installed, shows progress.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

# the families compared: a config class and its arguments beyond the preset's sizes
FAMILIES = {
    "transformer": ("TransformerConfig", {}),
    "gla": ("GLAConfig", dict(expand_k=0.5, use_short_conv=True)),
    "gated_deltanet": ("GatedDeltaNetConfig", dict(expand_v=1)),
    "gla+attn": ("GLAConfig", dict(expand_k=0.5, use_short_conv=True, attn="every_4th")),
}
PRESETS = {  # model sizes and the training budget
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=32, seq_len=128, batch=2, steps=60,
                 lr=3e-3, eval_every=10, families="transformer,gla,gla+attn"),
    "gpu": dict(hidden_size=768, num_hidden_layers=12, num_heads=6, head_dim=128, seq_len=1024, batch=16, steps=400,
                lr=1e-3, eval_every=25, families=",".join(FAMILIES)),
}


def load_text(limit: int) -> bytes:
    """The standard library's .py sources, in a fixed order, up to ``limit`` bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"\n".join(chunks)[:limit]


def make_config(name: str, preset: dict, models):
    cls_name, extra = FAMILIES[name]
    extra = dict(extra)
    kw = dict(vocab_size=256, hidden_size=preset["hidden_size"], num_hidden_layers=preset["num_hidden_layers"],
              num_heads=preset["num_heads"], max_position_embeddings=preset["seq_len"], fuse_cross_entropy=False)
    if name == "gated_deltanet":
        kw["head_dim"] = preset["head_dim"]
    if extra.pop("attn", None):
        L = preset["num_hidden_layers"]
        kw["attn"] = dict(layers=list(range(3, L, 4)) or [L - 1], num_heads=preset["num_heads"])
    return getattr(models, cls_name)(**kw, **extra)


def batches(data, seq_len: int, batch: int, steps: int, seed: int, torch):
    """``steps`` batches [batch, seq_len] of random windows of ``data`` (uint8 tensor)."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - seq_len - 1, (steps, batch), generator=gen)
    for row in starts:
        yield torch.stack([data[s:s + seq_len] for s in row.tolist()]).long()


def train(name, preset, train_data, val_batches, args, torch, models, progress):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    config = make_config(name, preset, models)
    model = AutoModelForCausalLM.from_config(config).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=preset["lr"], weight_decay=0.1, betas=(0.9, 0.95))
    steps = preset["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (steps // 10 + 1)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast("cpu", enabled=False)
    log = dict(family=name, parameters=n_params, steps=[], train_bpb=[], val_steps=[], val_bpb=[])
    tokens, start = 0, time.perf_counter()
    bar = progress(total=steps, desc=f"{name:>15}")
    for step, x in enumerate(batches(train_data, preset["seq_len"], preset["batch"], steps, seed=1, torch=torch)):
        x = x.to(args.device)
        model.train()
        with amp:
            loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel()
        log["steps"].append(step + 1)
        log["train_bpb"].append(loss.item() / math.log(2))
        if (step + 1) % preset["eval_every"] == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad(), amp:
                val = sum(model(v.to(args.device), labels=v.to(args.device)).loss.item() for v in val_batches)
            log["val_steps"].append(step + 1)
            log["val_bpb"].append(val / len(val_batches) / math.log(2))
        bar.set_postfix(bpb=f"{log['train_bpb'][-1]:.3f}")
        bar.update(1)
    bar.close()
    if args.device == "cuda":
        torch.cuda.synchronize()
    log["tokens_per_s"] = tokens / (time.perf_counter() - start)
    return log


class _NoBar:
    """A stand-in for tqdm when it is not installed: a line every tenth of the run."""

    def __init__(self, total, desc):
        self.total, self.desc, self.n = total, desc, 0

    def set_postfix(self, **kw):
        self.postfix = kw

    def update(self, n):
        self.n += n
        if self.n % max(1, self.total // 10) == 0 or self.n == self.total:
            print(f"{self.desc}: {self.n}/{self.total} {getattr(self, 'postfix', '')}", flush=True)

    def close(self):
        pass


def plot(logs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (the numbers are in the JSON)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for log in logs:
        line, = ax.plot(log["val_steps"], log["val_bpb"], marker="o", ms=3,
                        label=f"{log['family']} ({log['parameters'] / 1e6:.1f}M)")
        ax.plot(log["steps"], log["train_bpb"], color=line.get_color(), alpha=0.25, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte (validation; faint: train)")
    ax.set_title("Python standard library, byte level")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--families", default=None, help="comma-separated, from FAMILIES (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--out", default="train-out")
    p.add_argument("--replot", metavar="JSON", help="only draw the plot of an earlier run's train_<preset>.json "
                                                    "(for a run on a machine without matplotlib)")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text())["runs"], Path(args.replot).with_suffix(".png"))
        return
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels run on the CPU through Triton's interpreter
    import torch

    import fla.models as models
    try:
        from tqdm import tqdm as progress
    except ImportError:
        progress = _NoBar
    preset = dict(PRESETS[args.preset])
    if args.steps:
        preset["steps"] = args.steps
    families = (args.families or preset.pop("families")).split(",")
    preset.pop("families", None)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        sys.exit(f"unknown families {sorted(unknown)}; choose from {sorted(FAMILIES)}")
    text = load_text(limit=64 << 20 if args.preset == "gpu" else 8 << 20)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    split = int(len(data) * 0.95)
    train_data, val_data = data[:split], data[split:]
    val_batches = list(batches(val_data, preset["seq_len"], preset["batch"], 4, seed=2, torch=torch))
    print(f"{len(text) / 1e6:.1f} MB of the standard library's sources; {preset['steps']} steps of "
          f"{preset['batch']} x {preset['seq_len']} bytes per family, on {args.device}")
    logs = [train(name, preset, train_data, val_batches, args, torch, models, progress)
            for name in families]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(torch=torch.__version__, device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               preset=preset)
    (out / f"train_{args.preset}.json").write_text(json.dumps(dict(env=env, runs=logs), indent=1))
    for log in logs:
        print(f"{log['family']:>15}: {log['parameters'] / 1e6:6.2f}M parameters, validation "
              f"{log['val_bpb'][-1]:.3f} bits/byte, {log['tokens_per_s']:,.0f} tokens/s")
    plot(logs, out / f"train_{args.preset}.png")


if __name__ == "__main__":
    main()
