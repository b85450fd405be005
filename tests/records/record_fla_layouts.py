"""Record FLA 0.6.0's layer, model and module parameter layouts into
``tests/records/fla060_layouts.json``, so that our ``fla.layers`` / ``fla.models`` / ``fla.modules``
can be tested against them without importing upstream FLA at test time (issues 12 and 13).

Upstream is never installed into the project's venv: it goes into a directory of its own, and
this script runs in a separate process with that directory first on ``sys.path``::

    cd <repo root>
    python3 -m pip download --no-deps fla-core==0.6.0 flash-linear-attention==0.6.0 -d .whl
    .venv/bin/python -m pip install --no-deps --target <DIR> .whl/*.whl
    .venv/bin/python tests/records/record_fla_layouts.py <DIR>

(``<DIR>`` can also come from the environment: ``FLA_UPSTREAM=<DIR>``.) Run it from anywhere; it
drops the repo root and the current directory from ``sys.path`` and refuses to run if ``import fla``
does not resolve under ``<DIR>`` (our own ``fla`` is installed editable in the venv). Only the CPU
is used: modules are constructed, never run, so no kernel is needed.

What is recorded (shapes, never values; ``torch.manual_seed(0)`` before every construction):

* ``layers``: for each layer class, its ``__init__`` and ``forward`` signatures and, for a few
  small constructor configs, ``named_parameters()`` (name, shape, dtype, and any attributes set on
  the parameter object such as ``_no_weight_decay``), ``named_buffers()`` (with ``persistent``:
  whether it is in ``state_dict()``), ``named_modules()`` (name, class) and the instance's scalar
  attributes (``head_k_dim``, ``key_dim``, ...).
* ``models``: for each model type, the Config / Model / ForCausalLM class names, ``model_type``,
  the Config ``__init__`` signature, ``to_dict()`` of a default config, a few class attributes
  (``base_model_prefix``, ``_no_split_modules``, ``_tied_weights_keys``...) and, for a tiny config,
  the ForCausalLM ``state_dict()`` keys and shapes in order; ``gla`` also has a hybrid config.
* ``modules``: for the ``fla.modules`` classes of issue 12, their signatures and, for small
  configs, parameters and buffers as for layers.

FLA 0.6.0's ``Attention`` raises ImportError in ``__init__`` when flash-attn is not installed
(only a ``flash_attn_func is None`` check; shapes do not depend on flash-attn). The error is
recorded for the plain attempt; entries that need ``Attention`` are then also recorded with
``fla.layers.attn.flash_attn_func`` replaced by a placeholder that raises if called, and marked
``"flash_attn_placeholder": true``.

Errors are recorded per entry as strings (``"error"``) instead of failing the whole run.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

VERSION = "0.6.0"
HERE = Path(__file__).resolve().parent
OUT = HERE / "fla060_layouts.json"
REPO = HERE.parent.parent


def _setup_upstream() -> Path:
    arg = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FLA_UPSTREAM")
    if not arg:
        sys.exit(__doc__ + "\nerror: give the upstream directory as an argument or FLA_UPSTREAM")
    upstream = Path(arg).resolve()
    if not (upstream / "fla" / "__init__.py").is_file():
        sys.exit(f"error: {upstream} has no fla/__init__.py")
    # Our own fla must not shadow upstream: drop the repo and cwd, put upstream first.
    drop = {str(REPO), "", "."}
    sys.path[:] = [p for p in sys.path if p not in drop and Path(p or ".").resolve() != REPO]
    sys.path.insert(0, str(upstream))
    return upstream


UPSTREAM = _setup_upstream()
warnings.filterwarnings("ignore")

import torch  # noqa: E402

with contextlib.redirect_stderr(io.StringIO()):
    import fla  # noqa: E402

if not Path(fla.__file__).resolve().is_relative_to(UPSTREAM):
    sys.exit(f"error: `import fla` resolved to {fla.__file__}, not under {UPSTREAM}; refusing to record")

import fla.layers  # noqa: E402
import fla.layers.attn  # noqa: E402
import fla.models  # noqa: E402
import fla.modules  # noqa: E402

torch.set_default_device("cpu")


# ----------------------------------------------------------------------------------------------
# helpers

def _clean(text: str) -> str:
    """Strip machine paths (upstream dir, venv, repo) from a string headed for the JSON."""
    for p in sorted({str(UPSTREAM), str(REPO), sys.prefix, sys.base_prefix, str(Path.home())}, key=len, reverse=True):
        if p and len(p) > 1:
            text = text.replace(p, "<...>")
    return text


def _err(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = ""
    for fr in reversed(tb):
        if "/fla/" in fr.filename:
            where = f" (at fla/{fr.filename.rsplit('/fla/', 1)[1]}:{fr.lineno})"
            break
    return _clean(f"{type(e).__name__}: {e}{where}")


def _jsonable(v):
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, torch.dtype):
        return str(v)
    return _clean(repr(v))


def _signature(fn) -> dict:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        return {"error": _err(e)}
    params = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        d = {"name": p.name, "kind": p.kind.name}
        if p.default is not p.empty:
            d["default"] = _clean(repr(p.default))
        if p.annotation is not p.empty:
            d["annotation"] = _clean(p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation))
        params.append(d)
    return {"params": params}


def _attrs(mod: torch.nn.Module) -> dict:
    out = {}
    for k, v in vars(mod).items():
        if k.startswith("_") or k == "training":
            continue
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = _jsonable(v)
        elif isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = _jsonable(v)
    return out


def _layout(mod: torch.nn.Module) -> dict:
    sd = set(mod.state_dict().keys())
    params = []
    for n, p in mod.named_parameters():
        e = [n, list(p.shape), str(p.dtype).replace("torch.", "")]
        extra = {k: _jsonable(v) for k, v in vars(p).items() if not k.startswith("__")} if hasattr(p, "__dict__") else {}
        if extra:
            e.append(extra)
        params.append(e)
    buffers = [[n, list(b.shape), str(b.dtype).replace("torch.", ""), n in sd] for n, b in mod.named_buffers()]
    extra = {}
    expected = [p[0] for p in params] + [b[0] for b in buffers if b[3]]
    if sorted(expected) != sorted(sd):
        # e.g. tied submodules: named_parameters() lists a shared tensor once, state_dict() under every name
        extra["state_dict_differs"] = [[k, list(v.shape)] for k, v in mod.state_dict().items()]
    return {
        **extra,
        "parameters": params,
        "buffers": buffers,
        "num_parameters": sum(p.numel() for p in mod.parameters()),
        "modules": [[n, type(m).__name__] for n, m in mod.named_modules() if n],
        "attrs": _attrs(mod),
    }


def _placeholder_flash_attn(*args, **kwargs):
    raise RuntimeError("placeholder: flash-attn is not installed (layout recording only)")


@contextlib.contextmanager
def _flash_attn_placeholder():
    mod = fla.layers.attn
    saved = {k: getattr(mod, k, None) for k in ("flash_attn_func", "flash_attn_varlen_func")}
    for k in saved:
        setattr(mod, k, _placeholder_flash_attn)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(mod, k, v)


def _build(ctor, kwargs: dict, needs_flash_attn: bool = False) -> dict:
    """Construct ``ctor(**kwargs)`` and record its layout; on a flash-attn ImportError, retry with the
    placeholder and record both."""
    entry = {"config": _jsonable(kwargs)}
    try:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            mod = ctor(**kwargs)
        entry.update(_layout(mod))
        return entry
    except Exception as e:  # noqa: BLE001
        entry["error"] = _err(e)
        if not (needs_flash_attn or "flash" in str(e).lower()):
            return entry
    try:
        torch.manual_seed(0)
        with _flash_attn_placeholder(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            mod = ctor(**kwargs)
        entry["flash_attn_placeholder"] = True
        entry.update(_layout(mod))
    except Exception as e:  # noqa: BLE001
        entry["error_with_placeholder"] = _err(e)
    return entry


# ----------------------------------------------------------------------------------------------
# layers

LAYERS = {
    "LinearAttention": [
        dict(hidden_size=64, num_heads=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, num_kv_heads=2, expand_k=0.5, expand_v=2.0,
             feature_map="hedgehog", tie_feature_map_qk=False, layer_idx=0),
        dict(hidden_size=64, num_heads=2, feature_map="t2r", tie_feature_map_qk=True,
             output_norm="identity", norm_q=True, norm_k=True, layer_idx=0),
        dict(hidden_size=64, num_heads=2, feature_map="dpfp", elementwise_affine=False, layer_idx=0),
    ],
    "MultiScaleRetention": [
        dict(hidden_size=64, num_heads=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, use_short_conv=True, conv_size=4, conv_bias=True,
             use_output_gate=False, layer_idx=0),
        dict(hidden_size=128, num_heads=4, num_kv_heads=2, expand_v=1.0, fuse_norm=False,
             elementwise_affine=False, layer_idx=0),
    ],
    "GatedLinearAttention": [
        dict(hidden_size=64, num_heads=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, num_kv_heads=2, use_short_conv=True, conv_bias=True,
             use_output_gate=False, fuse_norm=False, layer_idx=0),
        dict(hidden_size=128, num_heads=4, expand_k=1.0, expand_v=2.0, gate_low_rank_dim=8,
             elementwise_affine=False, clamp_min=-5.0, layer_idx=0),
    ],
    "HGRN2Attention": [
        dict(hidden_size=64, expand_ratio=16, layer_idx=0),
        dict(hidden_size=64, num_heads=4, expand_ratio=None, use_short_conv=True, conv_bias=True, layer_idx=0),
        dict(hidden_size=128, expand_ratio=32, elementwise_affine=False, layer_idx=0),
    ],
    "RWKV6Attention": [
        dict(hidden_size=64, num_heads=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, proj_low_rank_dim=8, gate_low_rank_dim=16, layer_idx=0),
        dict(hidden_size=128, num_heads=4, expand_k=1.0, expand_v=2.0, fuse_norm=False,
             elementwise_affine=False, layer_idx=0),
    ],
    "RWKV7Attention": [
        dict(hidden_size=64, head_dim=32, layer_idx=0, num_hidden_layers=2),
        dict(hidden_size=64, head_dim=32, layer_idx=1, num_hidden_layers=2),
        dict(hidden_size=128, num_heads=4, head_dim=None, decay_low_rank_dim=8, gate_low_rank_dim=16,
             a_low_rank_dim=8, v_low_rank_dim=4, fuse_norm=True, layer_idx=1, num_hidden_layers=2),
        dict(hidden_size=128, head_dim=32, value_dim=256, layer_idx=0, num_hidden_layers=2),
        # value_dim != hidden_size with a v_lora (layer_idx > 0): upstream's init fails (recorded as an error)
        dict(hidden_size=128, head_dim=32, value_dim=256, layer_idx=1, num_hidden_layers=2),
    ],
    "DeltaNet": [
        dict(hidden_size=64, num_heads=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, use_gate=True, use_short_conv=False, use_beta=False, layer_idx=0),
        dict(hidden_size=64, num_heads=2, expand_v=2.0, qk_norm="sum", allow_neg_eigval=True,
             conv_bias=True, layer_idx=0),
    ],
    "GatedDeltaNet": [
        dict(hidden_size=64, head_dim=16, num_heads=4, layer_idx=0),
        dict(hidden_size=64, head_dim=16, num_heads=2, expand_v=1, use_gate=False, use_short_conv=False, layer_idx=0),
        dict(hidden_size=64, head_dim=16, num_heads=2, num_v_heads=4, allow_neg_eigval=True, conv_bias=True,
             layer_idx=0),
    ],
    "KimiDeltaAttention": [
        dict(hidden_size=64, head_dim=16, num_heads=4, layer_idx=0),
        dict(hidden_size=64, head_dim=16, num_heads=2, num_v_heads=4, expand_v=2, use_short_conv=False, layer_idx=0),
        dict(hidden_size=64, head_dim=16, num_heads=4, safe_gate=True, lower_bound=-5.0, allow_neg_eigval=True,
             conv_bias=True, layer_idx=0),
    ],
    "Mamba2": [
        dict(hidden_size=64, num_heads=8, head_dim=16, state_size=16, expand=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, head_dim=32, state_size=16, expand=2, n_groups=2, use_bias=True,
             use_conv_bias=False, D_has_hdim=True, rmsnorm=False, layer_idx=0),
    ],
    "Attention": [
        dict(hidden_size=64, num_heads=2, layer_idx=0),
        dict(hidden_size=64, num_heads=4, num_kv_heads=2, qkv_bias=True, qk_norm=True, window_size=16,
             rope_theta=500000.0, max_position_embeddings=128, layer_idx=0),
    ],
}


def record_layers() -> dict:
    out = {}
    for name, configs in LAYERS.items():
        cls = getattr(fla.layers, name, None)
        if cls is None:
            out[name] = {"error": f"fla.layers has no {name}"}
            continue
        out[name] = {
            "defined_in": cls.__module__,
            "init": _signature(cls.__init__),
            "forward": _signature(cls.forward),
            "configs": [_build(cls, c, needs_flash_attn=(name == "Attention")) for c in configs],
        }
    return out


# ----------------------------------------------------------------------------------------------
# models

TINY = dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, max_position_embeddings=128)
MODELS = {
    # model_type: (class prefix, tiny config)
    "transformer": ("Transformer", dict(TINY, num_heads=2)),
    "linear_attn": ("LinearAttention", dict(TINY, num_heads=2)),
    "retnet": ("RetNet", dict(TINY, num_heads=2)),
    "gla": ("GLA", dict(TINY, num_heads=2)),
    "hgrn2": ("HGRN2", dict(TINY, num_heads=2, expand_ratio=None)),
    "rwkv6": ("RWKV6", dict(TINY, num_heads=2, proj_low_rank_dim=8, gate_low_rank_dim=16)),
    "rwkv7": ("RWKV7", dict(TINY, head_dim=32, decay_low_rank_dim=8, gate_low_rank_dim=16,
                            a_low_rank_dim=8, v_low_rank_dim=4)),
    "delta_net": ("DeltaNet", dict(TINY, num_heads=2)),
    "gated_deltanet": ("GatedDeltaNet", dict(TINY, num_heads=2, head_dim=16)),
    "kda": ("KDA", dict(TINY, num_heads=2, head_dim=16)),
    "mamba2": ("Mamba2", dict(hidden_size=64, num_hidden_layers=2, vocab_size=100, num_heads=8, head_dim=16,
                              state_size=16, chunk_size=64)),
}
HYBRID = {
    "gla": dict(TINY, num_heads=2, attn={"layers": [1], "num_heads": 2, "num_kv_heads": 1, "window_size": 32,
                                         "rope_theta": 10000.0}),
}
CLASS_ATTRS = ("base_model_prefix", "_no_split_modules", "_tied_weights_keys", "supports_gradient_checkpointing",
               "_supports_cache_class", "_skip_keys_device_placement", "main_input_name", "config_class")


def _class_attrs(cls) -> dict:
    out = {}
    for a in CLASS_ATTRS:
        if hasattr(cls, a):
            v = getattr(cls, a)
            out[a] = v.__name__ if isinstance(v, type) else _jsonable(v)
    return out


def _model_layout(causal_cls, config_cls, kwargs: dict) -> dict:
    def ctor(**kw):
        return causal_cls(config_cls(**kw))

    entry = _build(ctor, kwargs)
    if "parameters" in entry:
        # The full model: keep state_dict keys/shapes (the checkpoint format) and the tying facts;
        # drop the per-module attrs, which are noise at model level.
        torch.manual_seed(0)
        ctx = _flash_attn_placeholder() if entry.get("flash_attn_placeholder") else contextlib.nullcontext()
        with ctx, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model = ctor(**kwargs)
        entry["state_dict"] = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                               for k, v in model.state_dict().items()]
        entry["config_to_dict"] = _jsonable(model.config.to_dict())
        entry["tied_lm_head"] = (model.get_output_embeddings() is not None
                                 and model.get_output_embeddings().weight is model.get_input_embeddings().weight)
        entry.pop("attrs", None)
    return entry


def record_models() -> dict:
    out = {}
    for model_type, (prefix, tiny) in MODELS.items():
        e = {}
        out[model_type] = e
        try:
            config_cls = getattr(fla.models, prefix + "Config")
            model_cls = getattr(fla.models, prefix + "Model")
            causal_cls = getattr(fla.models, prefix + "ForCausalLM")
        except AttributeError as err:
            e["error"] = _err(err)
            continue
        e["config_class"] = config_cls.__name__
        e["model_class"] = model_cls.__name__
        e["causal_lm_class"] = causal_cls.__name__
        e["config_module"] = config_cls.__module__
        e["modeling_module"] = causal_cls.__module__
        e["model_type"] = getattr(config_cls, "model_type", None)
        e["config_class_attrs"] = {a: _jsonable(getattr(config_cls, a)) for a in
                                   ("keys_to_ignore_at_inference", "attribute_map") if hasattr(config_cls, a)}
        e["model_class_attrs"] = _class_attrs(model_cls)
        e["causal_lm_class_attrs"] = _class_attrs(causal_cls)
        e["config_init"] = _signature(config_cls.__init__)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                e["default_config"] = _jsonable(config_cls().to_dict())
        except Exception as err:  # noqa: BLE001
            e["default_config"] = {"error": _err(err)}
        e["tiny"] = _model_layout(causal_cls, config_cls, tiny)
        if model_type in HYBRID:
            e["hybrid"] = _model_layout(causal_cls, config_cls, HYBRID[model_type])
    return out


# ----------------------------------------------------------------------------------------------
# modules

MODULES = {
    "RMSNorm": [dict(hidden_size=64), dict(hidden_size=64, bias=True), dict(hidden_size=64, elementwise_affine=False)],
    "LayerNorm": [dict(hidden_size=64), dict(hidden_size=64, bias=True)],
    "GroupNorm": [dict(num_groups=4, hidden_size=64), dict(num_groups=4, hidden_size=64, bias=True, is_rms_norm=True)],
    "RMSNormLinear": [dict(hidden_size=64)],
    "LayerNormLinear": [dict(hidden_size=64, bias=True)],
    "GroupNormLinear": [dict(num_groups=4, hidden_size=64)],
    "FusedRMSNormGated": [dict(hidden_size=16), dict(hidden_size=16, activation="sigmoid", elementwise_affine=False)],
    "FusedRMSNormSwishGate": [dict(hidden_size=16)],
    "FusedRMSNormSwishGateLinear": [dict(hidden_size=16)],
    "FusedLayerNormGated": [dict(hidden_size=16, bias=True)],
    "FusedLayerNormSwishGate": [dict(hidden_size=16)],
    "FusedLayerNormSwishGateLinear": [dict(hidden_size=16)],
    "RotaryEmbedding": [dict(dim=16), dict(dim=16, base=500000.0, scale_base=512.0, interleaved=True)],
    "ShortConvolution": [dict(hidden_size=64, kernel_size=4),
                         dict(hidden_size=64, kernel_size=4, bias=True, activation=None)],
    "L2Norm": [dict()],
    "GatedMLP": [dict(hidden_size=64), dict(hidden_size=64, hidden_ratio=2),
                 dict(hidden_size=64, intermediate_size=100, hidden_act="powlu", powglu_power=2.0, fuse_swiglu=False)],
    "FusedCrossEntropyLoss": [dict()],
    "FusedLinearCrossEntropyLoss": [dict()],
    "FusedKLDivLoss": [dict()],
}
FUNCTIONS = ("l2norm", "l2_norm", "rms_norm", "layer_norm", "group_norm", "rms_norm_linear", "layer_norm_linear",
             "swiglu", "swiglu_linear")


def record_modules() -> dict:
    out = {}
    for name, configs in MODULES.items():
        cls = getattr(fla.modules, name, None)
        if cls is None:
            out[name] = {"error": f"fla.modules has no {name}"}
            continue
        out[name] = {
            "defined_in": cls.__module__,
            "init": _signature(cls.__init__),
            "forward": _signature(cls.forward),
            "configs": [_build(cls, c) for c in configs],
        }
    funcs = {}
    import importlib
    for fn in FUNCTIONS:
        for modname in ("fla.modules", "fla.modules.l2norm", "fla.modules.layernorm", "fla.modules.activations",
                        "fla.modules.norm", "fla.modules.norm.l2norm", "fla.modules.norm.layernorm"):
            try:
                m = importlib.import_module(modname)
            except Exception:  # noqa: BLE001
                continue
            f = getattr(m, fn, None)
            if callable(f) and not inspect.ismodule(f):
                funcs[fn] = {"importable_from": modname, "defined_in": getattr(f, "__module__", None),
                             "signature": _signature(f)}
                break
    out["__functions__"] = funcs
    return out


# ----------------------------------------------------------------------------------------------

def main() -> None:
    import transformers
    flash = True
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        flash = False
    record = {
        "fla_version": getattr(fla, "__version__", VERSION),
        "generated_by": "tests/records/record_fla_layouts.py",
        "environment": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                        "python": sys.version.split()[0], "device": "cpu", "flash_attn_installed": flash},
        "notes": [
            "parameters: [name, shape, dtype(, attributes set on the Parameter object)] in named_parameters() order",
            "buffers: [name, shape, dtype, persistent (in state_dict)] in named_buffers() order",
            "modules: [name, class name] in named_modules() order (root omitted)",
            "state_dict_differs: present (state_dict keys and shapes) only where state_dict() keys are not exactly "
            "the parameters plus persistent buffers (tied submodules)",
            "flash_attn_placeholder: true means FLA's Attention refused to build without flash-attn and the "
            "entry was built with fla.layers.attn.flash_attn_func replaced by a placeholder (layout only)",
            "torch.manual_seed(0) before each construction; shapes only, no values",
        ],
        "layers": record_layers(),
        "models": record_models(),
        "modules": record_modules(),
    }
    text = json.dumps(record, indent=1)
    text = _clean(text)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT.name}: {len(text)} bytes")
    for section in ("layers", "models", "modules"):
        for k, v in record[section].items():
            if not isinstance(v, dict):
                continue
            items = {"": v, **{f"[config {i}]": c for i, c in enumerate(v.get("configs", []))},
                     ".tiny": v.get("tiny", {}), ".hybrid": v.get("hybrid", {})}
            for i, it in items.items():
                for ek in ("error", "error_with_placeholder"):
                    if isinstance(it, dict) and ek in it:
                        print(f"  {section}.{k}{i} {ek}: {it[ek][:200]}"
                              + (" (placeholder ok)" if ek == "error" and it.get("flash_attn_placeholder") else ""))


if __name__ == "__main__":
    main()
