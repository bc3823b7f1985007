"""The checklists of CONTRIBUTING.md, enforced: a registered method, model family, device
profile or data set that misses a part of its checklist fails here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from edgetune.cost import Rule, device_names, load_device
from edgetune.data.registry import DATASETS
from edgetune.families import FAMILIES, MODEL_TYPES
from edgetune.forecast import StepInputs, model_shape, predict
from edgetune.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_has_its_page_options_cost_rule_and_test_row(name):
    from methods.test_matrix import SETTINGS

    spec = METHODS[name]
    page = ROOT / "docs" / "methods" / f"{name}.md"
    assert page.is_file(), f"docs/methods/{name}.md is missing"
    assert name in page.read_text(), f"docs/methods/{name}.md never names {name}"
    assert name in SETTINGS, f"tests/methods/test_matrix.py has no row for {name}"
    assert dataclasses.is_dataclass(spec.options), "options must be a dataclass"
    assert dataclasses.fields(spec.options) == () or spec.parse({}) == spec.options()
    assert isinstance(spec.rule, Rule)
    assert spec.sends in ("delta", "seeds")
    if spec.scheme_option is not None:
        names = [f.name for f in dataclasses.fields(spec.options)]
        assert spec.scheme_option in names
    # the cost model prices it, for an encoder classifier and a decoder LM
    for shape, head in ((model_shape("minilm-l6"), "classifier"), (model_shape("gpt2"), "lm")):
        cost = predict(StepInputs(shape, batch=2, seq=32, head=head), name)
        assert cost.flops >= cost.fwd_flops > 0 and cost.memory.peak > cost.memory.weights > 0
        assert cost.trained_params > 0 and cost.method.startswith(name)
    assert re.search(rf"`{name}`", (ROOT / "README.md").read_text()), "README never names it"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_model_family_has_a_layout_a_tiny_model_and_a_shape(family):
    import tiny

    from edgetune.cost import shape_from_config
    from edgetune.models.anatomy import describe

    kinds = [k for k in tiny.CLASSES if MODEL_TYPES.get(tiny.config(k).model_type) == family]
    assert kinds, f"tests/tiny.py has no tiny model of the {family} family"
    for kind in kinds:
        anatomy = describe(tiny.model(kind))
        assert anatomy.family == family and anatomy.n_layers >= 1
        assert all(anatomy.modules("qkv", i) for i in range(anatomy.n_layers))
        assert shape_from_config(tiny.config(kind).to_dict()).n_layers >= 1


@pytest.mark.parametrize("name", device_names())
def test_a_device_profile_names_its_sources(name):
    device = load_device(name)
    assert device.title
    numbers = [device.memory, device.bandwidth, device.power, *device.peak_flops.values()]
    for number in (n for n in numbers if n is not None):
        assert number.source, f"{name}: a number without its source"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_data_set_is_documented(name):
    assert f"`{name}`" in (ROOT / "docs" / "assets.md").read_text(), (
        f"docs/assets.md does not describe the data set {name}"
    )
    spec = DATASETS[name]
    assert spec.task in ("classify", "lm", "summarize", "chat") and spec.description
