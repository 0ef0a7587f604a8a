"""ctgen.evaluation.metrics.control (known answers for the controllability arithmetic) and its hook in `ctgen evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctgen.evaluation.metrics.control import leakage, nearest_values, requested_z, response, set_unit


def test_requested_z_spans_two_standard_deviations_in_seven_steps():
    z = requested_z()
    assert len(z) == 7 and z[0] == -2.0 and z[-1] == 2.0 and z[3] == 0.0


def test_set_unit_sets_one_unit_and_keeps_the_others():
    mu = np.arange(6, dtype=np.float32).reshape(2, 3)
    latents = set_unit(mu, 1, np.array([-1.0, 0.5]))
    assert latents.shape == (2, 2, 3) and latents.dtype == np.float32
    assert np.array_equal(latents[:, :, 1], [[-1.0, 0.5], [-1.0, 0.5]])
    assert np.array_equal(latents[:, 0, [0, 2]], mu[:, [0, 2]]) and np.array_equal(latents[:, 1, [0, 2]], mu[:, [0, 2]])


def test_a_perfect_response_has_slope_one_and_r2_one():
    requested = np.tile(np.linspace(-20, 20, 7), (5, 1))
    scores = response(requested, requested.copy())
    assert scores["slope"] == pytest.approx(1.0) and scores["r2"] == pytest.approx(1.0)
    assert scores["intercept"] == pytest.approx(0.0, abs=1e-9) and scores["mae"] == pytest.approx(0.0)
    assert scores["n_points"] == 35 and scores["n_unmeasured"] == 0


def test_response_recovers_a_known_line_and_leaves_unmeasured_points_out():
    rng = np.random.default_rng(0)
    requested = np.tile(np.linspace(-2, 2, 7), (200, 1))
    measured = 0.5 * requested + 3.0 + rng.normal(0, 0.1, requested.shape)
    measured[0, :3] = np.nan
    scores = response(requested, measured)
    assert scores["slope"] == pytest.approx(0.5, abs=0.01) and scores["intercept"] == pytest.approx(3.0, abs=0.01)
    # R² = explained / total variance: var(0.5 x) / (var(0.5 x) + noise variance 0.01)
    explained = 0.25 * np.var(requested)
    assert scores["r2"] == pytest.approx(explained / (explained + 0.01), abs=0.01)
    assert scores["n_unmeasured"] == 3 and scores["n_points"] == 1397


def test_response_without_enough_points_reports_none():
    assert response(np.array([[1.0, 2.0]]), np.array([[1.0, np.nan]]))["slope"] is None
    assert response(np.ones((2, 3)), np.ones((2, 3)))["r2"] is None  # requests that do not vary


def test_leakage_is_the_within_slice_slope_in_standard_deviations():
    rng = np.random.default_rng(1)
    z = requested_z()
    offsets = rng.normal(0, 50, (30, 1))  # each slice's own value: must cancel
    sd = np.array([10.0, 4.0, 2.0])
    moves = 0.3 * sd[1] * z  # factor 1 moves 0.3 SD per SD; factor 0 not at all; factor 2 by -0.1
    measured = np.stack([np.broadcast_to(offsets, (30, 7)), offsets + moves, offsets - 0.1 * sd[2] * z], axis=2)
    assert leakage(z, measured, sd) == pytest.approx([0.0, 0.3, 0.1])


def test_leakage_is_nan_where_a_factor_is_never_measured_twice_or_has_no_spread():
    z = requested_z(3)
    measured = np.zeros((2, 3, 3))
    measured[:, :, 0] = np.nan
    measured[:, 1:, 1] = np.nan
    result = leakage(z, measured, np.array([1.0, 1.0, 0.0]))
    assert np.isnan(result).all()


def test_leakage_uses_only_the_measured_outputs_of_a_slice():
    z = requested_z(5)
    measured = (2.0 * z)[None, :, None].repeat(3, axis=0)
    measured[0, 0, 0] = measured[1, 4, 0] = np.nan
    assert leakage(z, measured, np.array([4.0]))[0] == pytest.approx(0.5)


def test_nearest_values_reads_the_value_of_the_nearest_reference():
    references = np.stack([np.full((4, 4), level) for level in (0.0, 1.0, 2.0, 3.0)])
    values = np.array([0.1, np.nan, 0.5, 0.9])
    images = np.stack([np.full((4, 4), x) for x in (0.2, 2.2, 1.1, 3.5)])
    # 1.1 is nearest to the reference at 1.0, whose value is unknown: the next nearest known one (2.0) answers
    assert nearest_values(images, references, values) == pytest.approx([0.1, 0.5, 0.5, 0.9])
    assert np.isnan(nearest_values(images, references, np.full(4, np.nan))).all()


# ---------------------------------------------------------------- the evaluate hook, on a known-answer model
class RotatingModel:
    """A "perfect" generator for rotation_deg (unit 0, mean 0°, std 10°): encode remembers each image and its
    measured rotation (unit 1 is the image's index); decode rotates the remembered image to the requested angle
    and ignores unit 2. Controllability must come out as slope 1, R² 1 and no leakage but what rotating a pixel
    grid costs; a factor bound to unit 2 as slope 0."""

    def __init__(self, sign: float = 1.0):
        from ctgen.runtime.card import ModelCard
        from ctgen.images.preprocess import CT_MAP, Grid

        self.grid = Grid(64, 3.75, hu_map=CT_MAP)
        self.card = ModelCard({"name": "rotating", "binding": {"units": [
            {"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 0.0, "std": 10.0}]}})
        self.latent_size, self.batch_size, self.sign, self.bank = 3, 8, sign, []

    def encode(self, images):
        from ctgen.factors import measure_slice
        from ctgen.images.preprocess import from_model

        mu = np.zeros((len(images), 3), np.float32)
        for row, image in enumerate(images[:, 0]):
            angle = measure_slice(from_model(image, self.grid), (3.75, 3.75))["rotation_deg"]
            self.bank.append((image, 0.0 if np.isnan(angle) else angle))
            mu[row] = (self.bank[-1][1] / 10.0, len(self.bank) - 1, 0.0)
        return mu, np.zeros_like(mu)

    def decode(self, z):
        from scipy.ndimage import rotate

        out = []
        for unit0, index, _ in z:
            image, angle = self.bank[int(round(index))]
            out.append(rotate(image, self.sign * (10.0 * unit0 - angle), reshape=False, order=1, mode="nearest"))
        return np.stack(out)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """5 phantom patients x 6 slices: their files and patients (factors.csv)."""
    from ctgen.evaluation.evaluate_data import load_factors
    from train.phantom import generate_study

    folder = tmp_path_factory.mktemp("phantom")
    table = load_factors(generate_study(folder, 5, 6, 11, workers=1, contact_sheet=False))
    return [folder / name for name in table["files"]], table["patients"]


def _rotating_model():
    """The model whose decode turns the head counter-clockwise on screen, as ctgen.factors counts the angle."""
    from ctgen.factors import measure_slice
    from ctgen.images.preprocess import from_model

    from scipy.ndimage import rotate

    probe = RotatingModel()
    head = probe.grid.hu_map.to_unit(np.clip(__import__("conftest").head_hu(64), -1024, 3072))
    turned = rotate(head, 10.0, reshape=False, order=1, mode="nearest")
    before, after = (measure_slice(from_model(x, probe.grid), (3.75, 3.75))["rotation_deg"] for x in (head, turned))
    return RotatingModel(sign=1.0 if after - before > 0 else -1.0)


def test_a_perfect_rotation_unit_scores_slope_one_r2_one_and_no_leakage(unseen):
    from ctgen.evaluation.evaluate_control import controllability

    files, patients = unseen
    pictures: dict = {}
    section = controllability(_rotating_model(), files, patients, None, 5, 0, lambda *a: None, pictures)
    entry = section["factors"]["rotation_deg"]
    assert section["n_patients"] == 5 and entry["n_sources"] == 5
    assert entry["requested"] == pytest.approx([-20, -13.333, -6.667, 0, 6.667, 13.333, 20], abs=1e-3)
    assert entry["slope"] == pytest.approx(1.0, abs=0.05) and entry["r2"] > 0.97
    assert entry["leakage_max"] < 0.1, entry["leakage"]
    requested, measured = pictures["control"]["rotation_deg"]
    assert requested.shape == measured.shape == (35,)


def test_held_out_patients_only_and_unmeasurable_factors_are_named(unseen):
    from ctgen.runtime.card import ModelCard
    from ctgen.io.dicom import patient_key
    from ctgen.evaluation.evaluate_control import controllability

    files, patients = unseen
    model = _rotating_model()
    model.card = ModelCard({"binding": {"units": [
        {"unit": 0, "factor": "rotation_deg", "mean": 0.0, "std": 10.0},
        {"unit": 1, "factor": "scale_x", "mean": 1.0, "std": 0.1},
        {"unit": 2, "factor": "age_years", "mean": 50.0, "std": 10.0}]}})
    train = {patient_key(p) for p in sorted(set(patients))[:3]}
    section = controllability(model, files, patients, train, 200, 0, lambda *a: None, None)
    assert section["n_patients"] == 2 and section["set"] == "held-out patients"
    assert section["factors"]["scale_x"]["skipped"].endswith("not a factor that ctgen.factors measures")
    assert section["factors"]["age_years"]["skipped"].endswith("a header factor")


def test_a_unit_turned_the_wrong_way_scores_slope_minus_one(unseen):
    from ctgen.evaluation.evaluate_control import controllability

    model = _rotating_model()
    model.sign = -model.sign
    entry = controllability(model, *unseen, None, 5, 0, lambda *a: None, None)["factors"]["rotation_deg"]
    assert entry["slope"] < -0.5


def test_series_factors_bound_to_a_unit_the_decoder_ignores_score_slope_zero(unseen):
    from ctgen.runtime.card import ModelCard
    from ctgen.evaluation.evaluate_control import controllability

    model = _rotating_model()
    model.card = ModelCard({"binding": {"units": [
        {"unit": 2, "factor": "level", "mean": 0.5, "std": 0.3},
        {"unit": 1, "factor": "head_width_max_mm", "mean": 140.0, "std": 6.0}]}})
    model.card["binding"]["units"][1]["unit"] = 2  # both on the ignored unit (a card would refuse that: a test only)
    section = controllability(model, *unseen, None, 5, 0, lambda *a: None, None)
    level, width = section["factors"]["level"], section["factors"]["head_width_max_mm"]
    assert level["requested"][0] == pytest.approx(0.5 - 0.3 * 5 / 3) and level["requested"][-1] == pytest.approx(1.0)
    assert level["n_sources"] == 5 and abs(level["slope"]) < 0.05 and "nearest" in level["method"]
    assert width["n_sources"] == 5 and abs(width["slope"]) < 0.05 and "whole series" in width["method"]
    assert "head_width_mm" not in width["leakage"] and "head_area_mm2" in width["leakage_follows"]


def test_evaluate_reports_controllability_of_a_bound_model(tiny_model_copy, unseen, tmp_path):
    from conftest import invoke
    from PIL import Image

    card_path = tiny_model_copy / "model.json"
    card = json.loads(card_path.read_text())
    card["binding"] = {"units": [{"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 0.0,
                                  "std": 8.0},
                                 {"unit": 1, "factor": "level", "unit_of_measure": "", "mean": 0.5, "std": 0.3},
                                 {"unit": 2, "factor": "age_years", "unit_of_measure": "years", "mean": 50,
                                  "std": 9}], "source": "measured", "fraction": 1.0}
    card_path.write_text(json.dumps(card))
    out = tmp_path / "report"
    result = invoke("evaluate", unseen[0][0].parent.parent, "--model", tiny_model_copy, "--out", out, "--no-real",
                    "--max-slices", "12", "--json")
    assert result.exit_code == 0, result.stderr
    section = json.loads((out / "metrics.json").read_text())["controllability"]
    assert section["n_patients"] == 5 and set(section["factors"]) == {"rotation_deg", "level", "age_years"}
    rotation = section["factors"]["rotation_deg"]
    assert rotation["n_sources"] == 5 and len(rotation["requested"]) == 7 and "head_width_mm" in rotation["leakage"]
    assert section["factors"]["age_years"]["skipped"].endswith("a header factor")
    # the tiny model's version-1 card maps HU through the -50..250 window: no air, no head mask, no levels
    assert section["factors"]["level"]["skipped"].endswith("whose levels can be measured")
    with Image.open(out / "control_rotation_deg.png") as image:
        assert image.format == "PNG"
    assert not (out / "control_age_years.png").exists() and not (out / "control_level.png").exists()
    markdown = (out / "report.md").read_text()
    assert "## Controllability of the bound units" in markdown
    assert "![control_rotation_deg.png](control_rotation_deg.png)" in markdown and "control_level" not in markdown
    summary = json.loads(result.stdout)["metrics"]["controllability"]
    assert set(summary["rotation_deg"]) >= {"slope", "r2", "leakage_max"} and "skipped" in summary["age_years"]


def test_the_controllability_reading_names_what_misses_the_targets():
    from ctgen.evaluation.report import _read_control

    entry = {"slope": 1.0, "r2": 0.9, "leakage_max": 0.1, "leakage_max_factor": "skull_mm"}
    section = {"n_patients": 200, "set": "held-out patients", "factors": {
        "rotation_deg": entry, "head_width_mm": {**entry, "slope": 0.5},
        "level": {**entry, "leakage_max": 0.4}, "age_years": {"skipped": "not measurable"}}}
    text = _read_control(section)
    assert "1 of 4 bound factors follow their unit" in text and ": rotation_deg;" in text
    assert "head_width_mm (slope 0.50)" in text and "level (skull_mm moves 0.40 SD per SD)" in text
    assert text.endswith("not scored: age_years.")


def test_level_needs_whole_series_and_says_so(unseen):
    from ctgen.runtime.card import ModelCard
    from ctgen.evaluation.evaluate_control import controllability

    files, patients = unseen
    keep = [index for index in range(len(files)) if index % 6 < 2]  # two slices a patient: no level to measure
    model = _rotating_model()
    model.card = ModelCard({"binding": {"units": [{"unit": 2, "factor": "level", "mean": 0.5, "std": 0.3}]}})
    section = controllability(model, [files[i] for i in keep], [patients[i] for i in keep], None, 5, 0,
                               lambda *a: None, None)
    assert section["factors"]["level"]["skipped"] == ("needs unseen patients with a whole series whose levels can "
                                                      "be measured")


def test_requests_stay_within_what_the_factor_can_be(unseen):
    from ctgen.runtime.card import ModelCard
    from ctgen.evaluation.evaluate_control import controllability

    model = _rotating_model()
    model.card = ModelCard({"binding": {"units": [
        {"unit": 2, "factor": "ventricle_mm2", "mean": 400.0, "std": 400.0},
        {"unit": 0, "factor": "rotation_deg", "mean": 0.0, "std": 10.0}]}})
    section = controllability(model, *unseen, None, 3, 0, lambda *a: None, None)
    assert section["factors"]["ventricle_mm2"]["requested"] == pytest.approx(np.linspace(0.0, 1200.0, 7))
    assert section["factors"]["rotation_deg"]["requested"] == pytest.approx(np.linspace(-20.0, 20.0, 7))


class LevelModel(RotatingModel):
    """A "perfect" generator for level (unit 2): it holds every patient's slices on the grid with their measured
    levels; encode finds an image's patient (unit 1); decode returns that patient's slice nearest the requested
    level. Level by nearest match must come out with slope near 1."""

    def __init__(self, files, patients):
        from dataclasses import replace

        from ctgen.io.dicom import read_slice
        from ctgen.evaluation.evaluate_control import _series_levels
        from ctgen.images.preprocess import from_model, to_grid_hu

        super().__init__()
        self.card = type(self.card)({"binding": {"units": [{"unit": 2, "factor": "level", "mean": 0.5, "std": 0.3}]}})
        self.series = []
        for patient in sorted(set(patients)):
            slices = [read_slice(path) for path, owner in zip(files, patients) if owner == patient]
            images = np.stack([self.grid.hu_map.to_unit(to_grid_hu(s.hu, s.spacing_mm, self.grid)) for s in slices])
            on_grid = [replace(s, hu=from_model(image, self.grid), spacing_mm=(3.75, 3.75))
                       for s, image in zip(slices, images)]
            self.series.append((images, _series_levels(on_grid)))

    def encode(self, images):
        mu = np.zeros((len(images), 3), np.float32)
        for row, image in enumerate(images[:, 0]):
            mu[row, 1] = min(range(len(self.series)), key=lambda p: np.abs(self.series[p][0] - image).sum(axis=(1, 2))
                             .min())
        return mu, np.zeros_like(mu)

    def decode(self, z):
        out = []
        for _, patient, level in z:
            images, levels = self.series[int(round(patient))]
            out.append(images[np.nanargmin(np.abs(levels - (0.5 + 0.3 * level)))])
        return np.stack(out)[:, None].astype(np.float32)


def test_a_perfect_level_unit_scores_slope_near_one_by_nearest_match(unseen):
    from ctgen.evaluation.evaluate_control import controllability

    entry = controllability(LevelModel(*unseen), *unseen, None, 5, 0, lambda *a: None, None)["factors"]["level"]
    # six slices a series: the levels come in steps of about 0.2, so the match is a staircase around the line
    assert entry["n_sources"] == 5 and entry["slope"] == pytest.approx(1.0, abs=0.15) and entry["r2"] > 0.85
