"""ctgen.runtime.card: the bound units' section (``binding``) of a card, read and checked."""

from __future__ import annotations

import json

import pytest

from ctgen.runtime.card import BoundUnit, read_card
from ctgen.errors import ModelError

BINDING = {"units": [{"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 1.5, "std": 8.0},
                     {"unit": 1, "factor": "head_width_max_mm", "unit_of_measure": "mm", "mean": 140.0, "std": 6.0}],
           "source": "measured", "fraction": 1.0}


def _with_binding(model_dir, binding):
    card_path = model_dir / "model.json"
    card = json.loads(card_path.read_text())
    card["binding"] = binding
    card_path.write_text(json.dumps(card))
    return model_dir


def test_a_card_without_binding_has_no_bound_units(tiny_model_dir):
    card = read_card(tiny_model_dir)
    assert card.bound_units == [] and card.bound_unit("rotation_deg") is None


def test_bound_units_map_latent_values_to_physical_ones(tiny_model_copy):
    card = read_card(_with_binding(tiny_model_copy, BINDING))
    assert card.bound_units[0] == BoundUnit(0, "rotation_deg", "deg", 1.5, 8.0)
    width = card.bound_unit("head_width_max_mm")
    assert width.unit == 1 and width.to_value(0.5) == pytest.approx(143.0)
    assert width.to_z(width.to_value(-1.25)) == pytest.approx(-1.25)


@pytest.mark.parametrize("units, reason", [
    ([{"unit": 99, "factor": "a", "mean": 0, "std": 1}], "below latent_size"),
    ([{"unit": 0, "factor": "a", "mean": 0, "std": 1}, {"unit": 0, "factor": "b", "mean": 0, "std": 1}], "distinct index"),
    ([{"unit": 0, "factor": "a", "mean": 0, "std": 1}, {"unit": 1, "factor": "a", "mean": 0, "std": 1}], "distinct name"),
    ([{"unit": 0, "factor": "a", "mean": 0, "std": 0}], "std finite and positive"),
    ([{"unit": 0, "factor": "a", "mean": 1e309, "std": 1}], "mean must be finite"),
    ([{"unit": True, "factor": "a", "mean": 0, "std": 1}], "distinct index"),
    (["rotation"], "must hold objects"),
])
def test_a_bad_binding_fails_as_one_model_error(tiny_model_copy, units, reason):
    with pytest.raises(ModelError, match=reason):
        read_card(_with_binding(tiny_model_copy, {"units": units}))


def test_unit_factors_are_the_named_factors_and_the_scored_labels_only_a_fallback(tiny_model_copy):
    card_path = tiny_model_copy / "model.json"
    card = json.loads(card_path.read_text())
    card["metrics"].update(unit_factors={"2": "level", "9": "beyond", "x": "junk"},
                           unit_labels={"3": {"factor": "rotation_deg", "nmi": 0.4},
                                        "5": {"factor": "rotation_deg", "nmi": 0.6}})
    card_path.write_text(json.dumps(card))
    card = read_card(tiny_model_copy)
    assert card.unit_factors == {2: "level"}  # {unit: factor name}, inside the latent; the scored labels are not in it
    assert card.unit_for_factor("level") == 2 and card.unit_for_factor("rotation_deg") == 5
    assert card.unit_label(2).startswith("u2 level") and card.unit_label(5).startswith("u5")
    assert not hasattr(card, "unit_labels")  # one name, one structure: metrics.unit_labels stays a card key only
