"""ctgen.metrics.control: known answers for the controllability arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from ctgen.metrics.control import leakage, nearest_values, requested_z, response, set_unit


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
