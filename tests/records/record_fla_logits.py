"""Record FLA 0.6.0's logits for fixed weights and inputs (GPU), into
``tests/records/fla060_logits.pt``, so that ``tests/test_models.py::test_logits_match_fla`` can
load the same weights into our models and compare (issue 13).

Upstream runs in a process of its own, from its unpacked wheels (never installed into the
project's venv), on the device machine::

    d=$(mktemp -d); for w in .whl/*.whl; do python3 -m zipfile -e $w $d; done
    (cd $d && PYTHONPATH= python3 $OLDPWD/tests/records/record_fla_logits.py $d $OLDPWD/tests/records/fla060_logits.pt)

For every family below (FLA 0.6.0's ``transformer`` needs flash-attn, not installed there), a
tiny config, ``torch.manual_seed(0)`` before the model is built, bf16 on the GPU, and fixed
input ids: the record holds the config, the state_dict, the ids and the logits (both
``mode='chunk'`` at T = 80 and a T = 20 input that FLA runs token by token), in bf16 and, as
``logits32_<T>``, of the same weights in fp32 (bf16's rounding alone moves a tiny random
model's logits by about the test's bound at some tokens: HGRN2's), or ``logits32_<T>_error``
where FLA refuses fp32 (its chunked delta rule does); a family's bf16 record is never replaced
by an fp32 failure. FLA autotunes each
family's kernels first (about a minute each on the H200): a record already at the output path
is continued (a family without fp32 logits gets them, from its recorded weights), so a run cut
short by the device's time limit resumes where it stopped::

    cp tests/records/fla060_logits.pt $OUT/ && (cd $d && PYTHONPATH= python3 ... $d $OUT/fla060_logits.pt)
"""

from __future__ import annotations

import os
import sys

TINY = dict(hidden_size=64, num_hidden_layers=2, vocab_size=64, num_heads=2, max_position_embeddings=128)
FAMILIES = {
    "gla": {}, "retnet": {}, "hgrn2": dict(expand_ratio=None), "linear_attn": {}, "delta_net": {},
    "gated_deltanet": dict(head_dim=32), "kda": dict(head_dim=32), "rwkv6": dict(proj_low_rank_dim=8,
                                                                                  gate_low_rank_dim=16),
    "rwkv7": dict(num_heads=None, head_dim=32, decay_low_rank_dim=8, gate_low_rank_dim=8, a_low_rank_dim=8,
                  v_low_rank_dim=8),
    "mamba2": dict(num_heads=4, head_dim=32, state_size=16),
}


def main(fla_dir: str, out: str):
    sys.path = [fla_dir] + [p for p in sys.path if p not in ("", ".")]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import fla
    assert fla.__file__.startswith(fla_dir), f"imported {fla.__file__}, not upstream's"
    import fla.models  # noqa: F401 - registers the model types
    # a record already at ``out`` is continued: its families stay, the others are recorded
    record = torch.load(out) if os.path.exists(out) else {}
    for family, extra in FAMILIES.items():
        entry = record.get(family, {})
        if "error" not in entry and all(f"logits32_{T}" in entry or f"logits32_{T}_error" in entry for T in (80, 20)):
            continue
        try:
            config = AutoConfig.for_model(family, **{**TINY, **extra})
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).cuda().to(torch.bfloat16).eval()
            if "error" in entry or "logits_80" not in entry:
                gen = torch.Generator().manual_seed(1)
                entry = dict(config={**TINY, **extra}, state_dict={k: v.cpu() for k, v in model.state_dict().items()})
                for T in (80, 20):
                    entry[f"ids_{T}"] = torch.randint(3, TINY["vocab_size"], (2, T), generator=gen)
                    with torch.no_grad():
                        entry[f"logits_{T}"] = model(entry[f"ids_{T}"].cuda()).logits.float().cpu()
            else:
                model.load_state_dict(entry["state_dict"])  # recorded before: only the fp32 logits are new
        except Exception as e:  # noqa: BLE001 - recorded (where nothing was before), the others go on
            error = f"{type(e).__name__}: {str(e)[:300]}"
            if "logits_80" not in entry:
                record[family] = dict(error=error)
                torch.save(record, out)
            print(family, error, flush=True)
            continue
        record[family] = entry
        model = model.float()
        for T in (80, 20):
            try:
                with torch.no_grad():
                    entry[f"logits32_{T}"] = model(entry[f"ids_{T}"].cuda()).logits.float().cpu()
            except Exception as e:  # noqa: BLE001 - FLA refuses some ops in fp32 (the chunked delta rule)
                entry[f"logits32_{T}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(family, "recorded", {T: entry.get(f"logits32_{T}_error", "fp32 too") for T in (80, 20)}, flush=True)
        torch.save(record, out)  # after each family: a run cut short keeps what it recorded


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
