"""ctgen.factors: exact answers on synthetic heads, known answers (|r| with the truth) on phantom slices."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from ctgen.io.dicom.read import Slice
from ctgen.factors import FACTORS, from_header, measure_series, measure_slice, measure_slices, slice_levels

IMAGE_FACTORS = [factor.name for factor in FACTORS if factor.source == "image"]


def ellipse_head(*, width_mm=150.0, length_mm=190.0, rotation_deg=0.0, skull_mm=6.0, scalp_mm=5.0,
                 ventricle=(0.0, 0.0), vessel_mm=0.0, noise_hu=0.0, spacing=(1.0, 1.0), size_mm=256.0, seed=0):
    """An elliptical head: scalp (40 HU) outside a skull ring (1200 HU) of ``skull_mm`` around brain (30 HU), a
    central CSF ellipse (5 HU) of semi-axes ``ventricle`` and a 200 HU disc of radius ``vessel_mm`` beside it,
    rotated counter-clockwise on screen; HU float32 (H, W)."""
    rows, cols = (int(round(size_mm / s)) for s in spacing)
    y = -((np.arange(rows) + 0.5) * spacing[0] - rows * spacing[0] / 2)[:, None]  # up on screen
    x = ((np.arange(cols) + 0.5) * spacing[1] - cols * spacing[1] / 2)[None, :]
    theta = math.radians(rotation_deg)
    u, v = x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)

    def inside(semi_u, semi_v):
        return (u / semi_u) ** 2 + (v / semi_v) ** 2 <= 1.0

    a, b = width_mm / 2, length_mm / 2
    hu = np.full((rows, cols), -1000.0, np.float32)
    hu[inside(a, b)] = 40.0
    hu[inside(a - scalp_mm, b - scalp_mm)] = 1200.0
    hu[inside(a - scalp_mm - skull_mm, b - scalp_mm - skull_mm)] = 30.0
    if ventricle[0] > 0:
        hu[inside(*ventricle)] = 5.0
    if vessel_mm > 0:
        hu[(u - 30.0) ** 2 + v**2 <= vessel_mm**2] = 200.0
    if noise_hu > 0:
        hu += np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape).astype(np.float32)
    return hu


# ------------------------------------------------------------------------------------ exact answers
@pytest.mark.parametrize(("rotation", "spacing"), [(0.0, (1.0, 1.0)), (-27.0, (1.0, 1.0)), (12.0, (0.8, 1.1)),
                                                   (41.0, (0.9, 0.9))])
def test_pose_and_size_of_an_ellipse(rotation, spacing):
    hu = ellipse_head(rotation_deg=rotation, spacing=spacing)
    found = measure_slice(hu, spacing)
    assert found["rotation_deg"] == pytest.approx(rotation, abs=2.0)
    assert found["head_width_mm"] == pytest.approx(150.0, rel=0.03)
    assert found["head_length_mm"] == pytest.approx(190.0, rel=0.03)
    assert found["head_area_mm2"] == pytest.approx(math.pi * 75.0 * 95.0, rel=0.03)
    assert found["skull_mm"] == pytest.approx(6.0, rel=0.12)


def test_rotation_of_a_head_wider_than_long_is_its_front_back_axis():
    """At the skull base the head can be wider than long: its long axis is then the left-right one, and the
    rotation is measured on the front-back axis (it read -80 instead of 10 degrees before)."""
    found = measure_slice(ellipse_head(width_mm=190.0, length_mm=160.0, rotation_deg=10.0), (1.0, 1.0))
    assert found["rotation_deg"] == pytest.approx(10.0, abs=2.0)
    assert found["head_width_mm"] > found["head_length_mm"]


@pytest.mark.parametrize("skull", [3.0, 5.0, 9.0])
def test_skull_thickness(skull):
    assert measure_slice(ellipse_head(skull_mm=skull, rotation_deg=8.0), (1.0, 1.0))["skull_mm"] == pytest.approx(
        skull, abs=0.6)


def test_csf_contrast_noise_and_brain_hu_of_a_known_head():
    spacing = (0.5, 0.5)
    plain = measure_slice(ellipse_head(spacing=spacing), spacing)
    assert plain["csf_fraction"] == 0.0 and plain["ventricle_mm2"] == 0.0 and plain["enhancing_fraction"] == 0.0
    assert plain["brain_hu"] == pytest.approx(30.0, abs=0.01) and plain["noise_hu"] == pytest.approx(0.0, abs=0.01)
    hu = ellipse_head(spacing=spacing, ventricle=(12.0, 25.0), vessel_mm=5.0, noise_hu=6.0)
    found = measure_slice(hu, spacing)
    ventricle_mm2, vessel_mm2 = math.pi * 12.0 * 25.0, math.pi * 25.0
    assert found["ventricle_mm2"] == pytest.approx(ventricle_mm2, rel=0.08)
    cavity_mm2 = math.pi * (75.0 - 11.0 - 2.0) * (95.0 - 11.0 - 2.0)  # shrunk by INNER_MARGIN_MM, within a pixel
    assert found["csf_fraction"] == pytest.approx(ventricle_mm2 / cavity_mm2, rel=0.1)
    # the smoothing box (2.5 mm here) widens a 5 mm disc's edge: about a third more area
    assert vessel_mm2 / cavity_mm2 < found["enhancing_fraction"] < 1.5 * vessel_mm2 / cavity_mm2
    assert found["noise_hu"] == pytest.approx(6.0, rel=0.08)
    expected_hu = (30.0 * (cavity_mm2 - ventricle_mm2 - vessel_mm2) + 5.0 * ventricle_mm2 + 200.0 * vessel_mm2)
    assert found["brain_hu"] == pytest.approx(expected_hu / cavity_mm2, abs=1.0)


def test_what_cannot_be_measured_is_nan():
    assert all(math.isnan(value) for value in measure_slice(np.full((64, 64), -1000.0), (1.0, 1.0)).values())
    assert list(measure_slice(np.full((8, 8), -1000.0))) == IMAGE_FACTORS
    round_head = measure_slice(ellipse_head(width_mm=170.0, length_mm=170.0, rotation_deg=20.0), (1.0, 1.0))
    assert math.isnan(round_head["rotation_deg"]) and round_head["head_width_mm"] == pytest.approx(170.0, rel=0.03)
    no_spacing = measure_slice(ellipse_head(rotation_deg=10.0))
    assert no_spacing["rotation_deg"] == pytest.approx(10.0, abs=2.0)
    assert all(math.isnan(no_spacing[name]) for name in IMAGE_FACTORS if name.endswith(("_mm", "_mm2")))
    assert no_spacing["brain_hu"] == pytest.approx(30.0, abs=0.01)
    no_skull = ellipse_head(rotation_deg=10.0)
    no_skull[no_skull > 300] = 40.0  # below the skull base: no closed ring
    found = measure_slice(no_skull, (1.0, 1.0))
    assert found["head_length_mm"] == pytest.approx(190.0, rel=0.03)
    assert all(math.isnan(found[name]) for name in ("skull_mm", "csf_fraction", "ventricle_mm2", "brain_hu",
                                                    "enhancing_fraction", "noise_hu"))


def test_bone_around_no_brain_is_no_skull():
    from pydicom.data import get_testdata_file

    from ctgen.io.dicom import read_slice

    neck = read_slice(get_testdata_file("CT_small.dcm"))  # a vertebra: marrow enclosed by cortical bone
    found = measure_slice(neck.hu, neck.spacing_mm)
    assert math.isfinite(found["head_area_mm2"])
    assert all(math.isnan(found[name]) for name in ("skull_mm", "csf_fraction", "brain_hu", "enhancing_fraction"))


def test_factor_table():
    names = [factor.name for factor in FACTORS]
    assert len(names) == len(set(names)) and all(factor.description for factor in FACTORS)
    assert {factor.source for factor in FACTORS} == {"image", "series", "header"}
    assert IMAGE_FACTORS == list(measure_slice(ellipse_head(), (1.0, 1.0)))


def test_header_factors():
    header = SimpleNamespace(age_years=45.0, sex="F", contrast_agent="IOHEXOL", kvp=120.0, slice_thickness_mm=5.0,
                             kernel="H30s")
    assert from_header(header) == {"age_years": 45.0, "sex": 1.0, "contrast": 1.0, "kvp": 120.0,
                                   "slice_thickness_mm": 5.0, "kernel": "H30s"}
    bare = from_header(SimpleNamespace(age_years=None, sex="O", contrast_agent="", kvp=None, slice_thickness_mm=None,
                                       kernel=""))
    assert bare["contrast"] == 0.0 and bare["kernel"] == ""
    assert all(math.isnan(bare[name]) for name in ("age_years", "sex", "kvp", "slice_thickness_mm"))


# ------------------------------------------------------------------------------------------ series
def ball_series(heights_mm, *, radius_mm=90.0, neck_below_mm=-60.0, orientation=(1, 0, 0, 0, 1, 0)):
    """Slices of a ball-shaped head (a neck of soft tissue below ``neck_below_mm``), given in reverse order."""
    slices = []
    for height in heights_mm[::-1]:
        across = 2.0 * math.sqrt(max(radius_mm**2 - height**2, 0.0))
        if across < 20.0:
            hu = np.full((128, 128), -1000.0, np.float32)
        else:
            hu = ellipse_head(width_mm=across, length_mm=across * 1.1, size_mm=256.0, spacing=(2.0, 2.0))
            if height < neck_below_mm:
                hu[hu > 300] = 40.0
        slices.append(Slice(hu=hu, spacing_mm=(2.0, 2.0), path=None, modality="CT", patient_id="P", series_uid="S",
                            position_mm=(0.0, 0.0, float(height)), orientation=orientation, instance_number=None,
                            slice_thickness_mm=5.0, window=None))
    return slices


def test_series_levels_from_the_heads_extent():
    heights = np.arange(-75.0, 95.0, 10.0)  # neck, brain from -55 mm, last head at 85 mm, air above
    rows, warnings = measure_series(ball_series(heights))
    assert warnings == []
    levels = np.array([row["level"] for row in rows])[::-1]
    expected = (heights - (-55.0)) / (85.0 - (-55.0))
    np.testing.assert_allclose(levels, expected, atol=1e-9)
    # the widest slices lie 5 mm off the ball's equator
    assert rows[0]["head_width_max_mm"] == pytest.approx(2.0 * math.sqrt(90.0**2 - 5.0**2), rel=0.03)
    assert rows[0]["head_length_max_mm"] == pytest.approx(1.1 * rows[0]["head_width_max_mm"], rel=0.03)
    assert all(row["slice_thickness_mm"] == 5.0 for row in rows)


def test_slices_of_many_series_are_measured_series_by_series():
    whole, part = ball_series(np.arange(-75.0, 95.0, 10.0)), ball_series(np.arange(-35.0, 45.0, 10.0))
    part = [dataclasses.replace(one, series_uid="T") for one in part]
    alone = dataclasses.replace(part[0], series_uid="")
    mixed = [one for pair in zip(whole, part) for one in pair] + whole[len(part):] + [alone]
    rows, warnings = measure_slices(mixed)
    assert rows[0:2 * len(part):2] == measure_series(whole)[0][: len(part)]
    assert rows[1:2 * len(part):2] == measure_series(part)[0]
    assert list(warnings) == ["T"] and len(warnings["T"]) == 2
    assert math.isnan(rows[-1]["level"]) and math.isfinite(rows[-1]["head_area_mm2"])


def test_series_that_do_not_cover_the_head_say_so():
    _, warnings = measure_series(ball_series(np.arange(-35.0, 45.0, 10.0)))
    assert len(warnings) == 2 and "starts inside the brain" in warnings[0] and "below the vertex" in warnings[1]
    rows, warnings = measure_series(ball_series([0.0, 10.0]))
    assert all(math.isnan(row["level"]) for row in rows) and "fewer than 3 slices" in warnings[0]
    coronal = ball_series([0.0, 10.0, 20.0], orientation=(1, 0, 0, 0, 0, -1))
    assert all(math.isnan(row["level"]) for row in measure_series(coronal)[0])
    levels, warnings = slice_levels(np.array([0.0, 5.0, 10.0]), np.array([1.0, 1.0, 1.0]), np.zeros(3, bool))
    assert np.isnan(levels).all() and "no slice holds brain" in warnings[0]


# ----------------------------------------------------------------------- known answers on the phantom
def correlation(measured, truth) -> float:
    measured, truth = np.asarray(measured, float), np.asarray(truth, float)
    finite = np.isfinite(measured) & np.isfinite(truth)
    assert finite.sum() >= 0.8 * len(measured)
    return float(abs(np.corrcoef(measured[finite], truth[finite])[0, 1]))


def multiple_correlation(measured, truths) -> float:
    """|r| between a measurement and its least-squares fit on several true factors."""
    design = np.column_stack([*truths, np.ones(len(measured))])
    coefficients, *_ = np.linalg.lstsq(design, measured, rcond=None)
    return correlation(measured, design @ coefficients)


@pytest.fixture(scope="module")
def phantom_slices():
    """24 phantom patients, one slice each near the middle level, 256² at 0.9 mm: (true factors, measured)."""
    pytest.importorskip("nibabel")
    from train.phantom import sample_patient
    from train.phantom.render import render_slice

    rng = np.random.default_rng(2025)
    out = []
    for _ in range(24):
        patient = {**sample_patient(rng), "level": float(rng.uniform(0.4, 0.6))}
        hu = render_slice(patient, rng).reshape(256, 2, 256, 2).mean(axis=(1, 3))
        out.append((patient, measure_slice(hu, (0.9, 0.9))))
    return out


# measurement -> (the phantom's true factor, |r| floor); the figures measured are in the commit message
KNOWN_ANSWERS = {
    "rotation_deg": ("rotation_deg", 0.98),
    "head_width_mm": ("scale_x", 0.9),
    "head_length_mm": ("scale_y", 0.85),
    "skull_mm": ("skull_mm", 0.85),
    "ventricle_mm2": ("ventricle_mm", 0.65),  # the ventricles' cross-section also changes with the level
    "enhancing_fraction": ("contrast_hu", 0.8),
    "noise_hu": ("noise_hu", 0.95),
}


@pytest.mark.parametrize("measurement", list(KNOWN_ANSWERS))
def test_known_answers_on_phantom_slices(phantom_slices, measurement):
    truth, floor = KNOWN_ANSWERS[measurement]
    r = correlation([found[measurement] for _, found in phantom_slices], [true[truth] for true, _ in phantom_slices])
    print(f"{measurement} vs {truth}: |r| = {r:.3f}")
    assert r >= floor


def test_csf_fraction_follows_ventricles_and_atrophy(phantom_slices):
    measured = np.array([found["csf_fraction"] for _, found in phantom_slices])
    truths = [np.array([true[name] for true, _ in phantom_slices]) for name in ("ventricle_mm", "atrophy_mm")]
    r = multiple_correlation(measured, truths)
    print(f"csf_fraction vs ventricle_mm + atrophy_mm: |r| = {r:.3f}")
    assert r >= 0.8


@pytest.mark.slow
def test_known_answers_on_phantom_series():
    pytest.importorskip("nibabel")
    from train.phantom import level_to_z_mm, render_patient

    measured_level, true_level, width, length, scale_x, scale_y = [], [], [], [], [], []
    for index in range(10):
        patient, levels, hu = render_patient(np.random.SeedSequence(77, spawn_key=(index,)), 6)
        slices = [Slice(hu=image.reshape(256, 2, 256, 2).mean(axis=(1, 3)), spacing_mm=(0.9, 0.9), path=None,
                        modality="CT", patient_id=str(index), series_uid=str(index),
                        position_mm=(0.0, 0.0, level_to_z_mm({**patient, "level": float(level)})),
                        orientation=(1, 0, 0, 0, 1, 0), instance_number=None, slice_thickness_mm=None, window=None)
                  for image, level in zip(hu, levels)]
        rows, _ = measure_series(slices)
        measured_level += [row["level"] for row in rows]
        true_level += list(levels)
        width.append(rows[0]["head_width_max_mm"])
        length.append(rows[0]["head_length_max_mm"])
        scale_x.append(patient["scale_x"])
        scale_y.append(patient["scale_y"])
    figures = {"level": correlation(measured_level, true_level), "head_width_max_mm": correlation(width, scale_x),
               "head_length_max_mm": correlation(length, scale_y)}
    print(", ".join(f"{name} |r| = {r:.3f}" for name, r in figures.items()))
    assert figures["level"] >= 0.98 and figures["head_width_max_mm"] >= 0.8 and figures["head_length_max_mm"] >= 0.8
