"""flagen.ir.serialize: every built-in and example spec survives JSON unchanged, and the text
read back is checked before sympy sees it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flagen.ir import SpecError
from flagen.ir.library import BUILTINS
from flagen.ir.serialize import spec_from_dict, spec_to_dict

sys.path.insert(0, str(Path(__file__).parent.parent / "examples" / "variants"))
import novel_delta_rules  # noqa: E402

SPECS = {**BUILTINS, **{v.name: v for v in novel_delta_rules.VARIANTS}}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_round_trip(name):
    spec = SPECS[name]
    back = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))
    assert back == spec and back.ir_text() == spec.ir_text()


@pytest.mark.parametrize("text", ['__import__("os").system("true")', "a.real", "a; b", "lambda: 0", "[a]", "a @ a",
                                  "getattr(a, 'x')", "head_index.__class__"])
def test_expression_text_is_checked(text):
    data = spec_to_dict(novel_delta_rules.gated_delta_rule_learned_floor)
    with pytest.raises(SpecError, match="gate"):
        spec_from_dict({**data, "gate": text})


def test_bad_data_is_refused():
    data = spec_to_dict(BUILTINS["gla"])
    with pytest.raises(SpecError, match="unknown keys"):
        spec_from_dict({**data, "extra": 1})
    with pytest.raises(SpecError, match="decay"):
        spec_from_dict({**data, "decay": "sometimes"})
    with pytest.raises(SpecError):
        spec_from_dict({**data, "gate": None})  # a per-key decay needs its gate
