"""Models of any recurrence, a built-in variant or a user's: ``RecurrentConfig``,
``RecurrentModel`` and ``RecurrentForCausalLM`` on the shared stack (fla.models.modeling), with
``fla.layers.RecurrentLayer`` token mixers.

``recurrence`` names the spec: a built-in's name (``"gla"``), a ``flagen.ir.Recurrence``, or
``"path/to/variants.py:name"`` (a variant file and the spec's name in it). A user's spec is kept
in the config as data (flagen.ir.serialize), so ``config.json`` records its IR and the model
loads with ``from_pretrained`` without the file that defined it. There is no FLA counterpart.
"""

from __future__ import annotations

from pathlib import Path

from fla.layers import RecurrentLayer
from fla.models.configuration import FLAConfig
from fla.models.modeling import FLABlock, model_classes

DEFAULTS = dict(hidden_size=2048, recurrence="gla", expand_k=0.5, expand_v=1.0, num_heads=4, num_kv_heads=None,
                attn_mode=None, use_short_conv=True, conv_size=4, conv_bias=False, use_output_gate=True,
                elementwise_affine=True, constants=None, head_init=None)


def recurrence_data(recurrence):
    """The config's form of ``recurrence``: a built-in's name as is, any other spec as data."""
    from flagen.ir import Recurrence
    from flagen.ir.library import BUILTINS
    from flagen.ir.serialize import spec_from_dict, spec_to_dict
    if isinstance(recurrence, Recurrence):
        return recurrence.name if BUILTINS.get(recurrence.name) == recurrence else spec_to_dict(recurrence)
    if isinstance(recurrence, dict):
        return spec_to_dict(spec_from_dict(recurrence))  # checked now, not at the first layer
    if isinstance(recurrence, str) and ":" in recurrence:
        from flagen.codegen.build import load_user_specs
        path, name = recurrence.rsplit(":", 1)
        found = {s.name: s for s in load_user_specs(Path(path))}
        if name not in found:
            raise ValueError(f"`recurrence`: {path} defines no variant {name!r} (it has {sorted(found)})")
        return spec_to_dict(found[name])
    if isinstance(recurrence, str):
        if recurrence not in BUILTINS:
            raise ValueError(f"`recurrence` {recurrence!r} is not a built-in variant ({sorted(BUILTINS)}); "
                             "give a flagen.ir.Recurrence or 'variants_file.py:name'")
        return recurrence
    raise TypeError(f"`recurrence` must be a built-in's name, a flagen.ir.Recurrence, 'file.py:name' or a spec's "
                    f"data, got {type(recurrence).__name__}")


def recurrence_spec(data):
    """The spec of the config's ``recurrence`` (recurrence_data's form)."""
    from flagen.ir.serialize import spec_from_dict
    return data if isinstance(data, str) else spec_from_dict(data)


class RecurrentConfig(FLAConfig):
    """FLAConfig with the recurrence and its layer's options: ``attn_mode`` None takes the chunked
    kernels where the spec has them, else the token-by-token ones; ``constants`` and
    ``head_init`` go to RecurrentLayer."""

    model_type = "flagen_recurrent"
    defaults = DEFAULTS

    def __init__(self, **kwargs):
        FLAConfig.__init__(self, **kwargs)
        self.recurrence = recurrence_data(self.recurrence)


def _mixer(c, i):
    spec = recurrence_spec(c.recurrence)
    mode = c.attn_mode
    if mode is None:
        from flagen.runtime.op import get_op
        mode = "chunk" if get_op(spec).module.CHUNKED else "fused_recurrent"
    return RecurrentLayer(
        spec, hidden_size=c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, expand_k=c.expand_k,
        expand_v=c.expand_v, mode=mode, use_short_conv=c.use_short_conv, conv_size=c.conv_size, conv_bias=c.conv_bias,
        use_output_gate=c.use_output_gate, gate_fn=c.hidden_act, elementwise_affine=c.elementwise_affine,
        norm_eps=c.norm_eps, fuse_norm=c.fuse_norm, constants=c.constants, head_init=c.head_init, layer_idx=i)


RecurrentBlock = type("RecurrentBlock", (FLABlock,), dict(mixer=staticmethod(_mixer), __module__=__name__))
RecurrentModel, RecurrentForCausalLM = model_classes("Recurrent", RecurrentConfig, RecurrentBlock, __name__)
