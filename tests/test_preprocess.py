"""ctgen.images.preprocess: physical resampling, centring, windowing and the inverse, on synthetic slices."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from ctgen.errors import InputError
from ctgen.images.preprocess import AIR_HU, WINDOW_DEFAULT, Grid, batch_to_model, from_model, to_model, window_to_unit

GRID_128 = Grid(size=128, spacing_mm=1.875)
DISC_HU = 200.0  # inside the default window, well above the body threshold
# Geometry is measured at half maximum, so air must not be clipped away: air -> 0, disc -> 1.
GEOMETRY_WINDOW = (AIR_HU, DISC_HU)


def disc_slice(spacing_mm, *, radius_mm=60.0, center_offset_mm=(0.0, 0.0), fov_mm=230.0, hu=DISC_HU):
    """HU float32 image of a disc of ``radius_mm`` in air, its centre ``center_offset_mm`` (row, col) off the middle."""
    row_mm, col_mm = spacing_mm
    shape = (round(fov_mm / row_mm), round(fov_mm / col_mm))
    rows = (np.arange(shape[0]) - (shape[0] - 1) / 2) * row_mm - center_offset_mm[0]
    cols = (np.arange(shape[1]) - (shape[1] - 1) / 2) * col_mm - center_offset_mm[1]
    inside = rows[:, None] ** 2 + cols[None, :] ** 2 <= radius_mm**2
    return np.where(inside, hu, AIR_HU).astype(np.float32)


def half_max_extent(profile):
    """Number of samples of a 1-D profile above half its maximum (a diameter, in pixels)."""
    return float((profile > profile.max() / 2).sum())


def centroid(image):
    weights = image / image.sum()
    rows, cols = np.indices(image.shape)
    return float((weights * rows).sum()), float((weights * cols).sum())


@pytest.mark.parametrize("spacing_mm", [(0.45, 0.45), (0.7, 0.7), (0.5, 0.8), (2.5, 2.5)])
@pytest.mark.parametrize("size", [128, 256])
def test_disc_has_its_physical_radius_on_the_model_grid(spacing_mm, size):
    grid = Grid(size=size, spacing_mm=240.0 / size, window_hu=GEOMETRY_WINDOW)
    radius_mm = 60.0
    image = to_model(disc_slice(spacing_mm, radius_mm=radius_mm), spacing_mm, grid)
    expected_diameter = 2 * radius_mm / grid.spacing_mm
    middle = grid.size // 2
    # centre row and column, plus the area-equivalent diameter
    assert half_max_extent(image[middle]) == pytest.approx(expected_diameter, abs=2.0)
    assert half_max_extent(image[:, middle]) == pytest.approx(expected_diameter, abs=2.0)
    area_diameter = 2 * np.sqrt((image > image.max() / 2).sum() / np.pi)
    assert area_diameter == pytest.approx(expected_diameter, abs=0.5)


def test_output_dtype_shape_and_range():
    hu = np.random.default_rng(0).normal(0, 800, (300, 280)).astype(np.float64)
    image = to_model(hu, (0.8, 0.8), GRID_128)
    assert image.dtype == np.float32 and image.shape == (128, 128)
    assert image.min() >= 0.0 and image.max() <= 1.0


def test_downsampling_does_not_alias():
    # stripes with a 2-pixel period at 0.45 mm: far above the 1.875 mm grid's Nyquist limit
    stripes = np.where(np.arange(512) % 2 == 0, 0.0, 200.0).astype(np.float32)
    hu = np.tile(stripes, (512, 1))
    image = to_model(hu, (0.45, 0.45), GRID_128, center=False)
    interior = image[20:-20, 20:-20]  # away from the field-of-view edge, where air begins
    assert interior.std() < 0.01
    assert interior.mean() == pytest.approx(window_to_unit(np.float32(100.0), WINDOW_DEFAULT), abs=0.01)


def test_centring_moves_an_off_centre_head_to_the_middle():
    hu = disc_slice((0.5, 0.5), radius_mm=50.0, center_offset_mm=(40.0, -30.0))
    grid = Grid(size=128, spacing_mm=1.875, window_hu=GEOMETRY_WINDOW)
    middle = (grid.size - 1) / 2
    centred = centroid(to_model(hu, (0.5, 0.5), grid))
    assert centred == pytest.approx((middle, middle), abs=0.5)
    # without centring the disc stays 40 mm down and 30 mm left
    kept = centroid(to_model(hu, (0.5, 0.5), grid, center=False))
    assert kept == pytest.approx((middle + 40.0 / 1.875, middle - 30.0 / 1.875), abs=0.5)


def test_round_trip_within_window_is_accurate():
    grid = Grid(size=64, spacing_mm=1.0)
    hu = np.random.default_rng(1).uniform(-50.0, 250.0, (64, 64)).astype(np.float32)
    back = from_model(to_model(hu, (1.0, 1.0), grid, center=False)[None, None], grid)
    assert back.shape == (1, 64, 64) and back.dtype == np.float32
    np.testing.assert_allclose(back[0], hu, atol=0.01)


def test_round_trip_clips_outside_the_window():
    grid = Grid(size=8, spacing_mm=1.0)
    hu = np.full((8, 8), 40.0, dtype=np.float32)
    hu[0, 0], hu[7, 7] = -1000.0, 3000.0
    back = from_model(to_model(hu, (1.0, 1.0), grid, center=False), grid)
    assert back[0, 0] == pytest.approx(-50.0) and back[7, 7] == pytest.approx(250.0)
    assert back[3, 3] == pytest.approx(40.0, abs=1e-3)


def test_missing_spacing_warns_and_fills_the_grid_with_the_longer_side():
    hu = np.full((200, 100), DISC_HU, dtype=np.float32)
    grid = Grid(size=128, spacing_mm=1.875, window_hu=GEOMETRY_WINDOW)
    with pytest.warns(UserWarning, match="no pixel spacing"):
        image = to_model(hu, None, grid, center=False)
    body = image > image.max() / 2
    assert body.any(axis=1).sum() == 128
    assert body.any(axis=0).sum() == pytest.approx(64, abs=1)


def test_constant_images():
    # field of view (512 * 0.5 mm) wider than the grid (240 mm): no air enters
    tissue = to_model(np.full((512, 512), 40.0, np.float32), (0.5, 0.5), GRID_128)
    np.testing.assert_allclose(tissue, window_to_unit(np.float32(40.0), WINDOW_DEFAULT), atol=1e-5)
    air = to_model(np.full((512, 512), AIR_HU, np.float32), (0.5, 0.5), GRID_128)
    assert not air.any()


def test_non_finite_values_count_as_air():
    hu = np.full((64, 64), 40.0, dtype=np.float32)
    hu[10:20, 10:20] = np.nan
    hu[30, 30] = np.inf
    image = to_model(hu, (1.0, 1.0), Grid(size=64, spacing_mm=1.0), center=False)
    assert np.isfinite(image).all()
    assert image[15, 15] == 0.0


def test_batch_to_model():
    slices = [
        SimpleNamespace(hu=disc_slice((0.45, 0.45)), spacing_mm=(0.45, 0.45), path="a.dcm"),
        SimpleNamespace(hu=disc_slice((0.7, 0.7)), spacing_mm=(0.7, 0.7), path="b.dcm"),
    ]
    batch = batch_to_model(slices, GRID_128)
    assert batch.shape == (2, 1, 128, 128) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0], to_model(slices[0].hu, (0.45, 0.45), GRID_128))
    assert batch_to_model([], GRID_128).shape == (0, 1, 128, 128)
    with pytest.warns(UserWarning, match="c.dcm"):
        batch_to_model([SimpleNamespace(hu=slices[0].hu, spacing_mm=None, path="c.dcm")], GRID_128)


def test_no_warning_with_spacing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_model(disc_slice((0.5, 0.5)), (0.5, 0.5), GRID_128)


@pytest.mark.parametrize(
    ("hu", "spacing_mm"),
    [(np.zeros((4, 4, 4)), (1.0, 1.0)), (np.zeros((0, 4)), (1.0, 1.0)), (np.zeros((4, 4)), (0.0, 1.0)),
     (np.zeros((4, 4)), (1.0,)), (np.zeros((4, 4)), (float("nan"), 1.0))],
)
def test_bad_inputs_raise_input_error(hu, spacing_mm):
    with pytest.raises(InputError):
        to_model(hu, spacing_mm, GRID_128)


def test_from_model_shapes():
    grid = Grid(size=16, spacing_mm=1.0)
    images = np.linspace(0.0, 1.0, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    hu = from_model(images, grid)
    assert hu.shape == (2, 16, 16) and hu.dtype == np.float32
    np.testing.assert_array_equal(from_model(images[:, 0], grid), hu)
    assert from_model(images[0, 0], grid).shape == (16, 16)
    assert hu.min() == pytest.approx(-50.0) and hu.max() == pytest.approx(250.0)
    assert from_model(np.full((16, 16), 1.5), grid).max() == pytest.approx(250.0)
    with pytest.raises(InputError, match="shape"):
        from_model(np.zeros((2, 1, 8, 8)), grid)


def test_window_to_unit():
    unit = window_to_unit(np.array([-100.0, -50.0, 100.0, 250.0, 400.0]), (-50.0, 250.0))
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(InputError):
        window_to_unit(np.zeros(3), (10.0, 10.0))


def test_grid_card_round_trip_and_validation():
    grid = Grid(size=128, spacing_mm=1.875, window_hu=(-50, 250))
    card = grid.to_card()
    assert card == {"image_size": 128, "spacing_mm": 1.875, "window_hu": [-50.0, 250.0]}
    assert Grid.from_card({**card, "latent_size": 50}) == grid
    assert isinstance(grid.window_hu, tuple) and isinstance(grid.spacing_mm, float)
    with pytest.raises(InputError, match="spacing_mm"):
        Grid.from_card({"image_size": 128, "window_hu": [-50, 250]})
    for bad in ({"size": 0}, {"size": 12.5}, {"spacing_mm": -1.0}, {"window_hu": (250.0, -50.0)}):
        with pytest.raises(InputError):
            Grid(**bad)


def _dense_reference(hu, spacing_mm, grid, center):
    """to_model written the plain way: full (S, H) and (S, W) matrices, HU + 1000 resampled, then windowed."""
    from ctgen.images.preprocess import _axis_band, _body_centroid

    def matrix(n_in, step, center_in):
        taps, band = _axis_band(n_in, step, grid.size, center_in)
        weights = np.zeros((grid.size, n_in))
        for k in range(grid.size):
            for tap, weight in zip(taps[k], band[k]):
                weights[k, tap] += weight
        return weights

    rows, cols = hu.shape
    center_row, center_col = _body_centroid(hu, spacing_mm) if center else ((rows - 1) / 2, (cols - 1) / 2)
    resampled = (matrix(rows, grid.spacing_mm / spacing_mm[0], center_row) @ (hu.astype(np.float64) - AIR_HU)
                 @ matrix(cols, grid.spacing_mm / spacing_mm[1], center_col).T) + AIR_HU
    return np.clip((resampled - grid.window_hu[0]) / (grid.window_hu[1] - grid.window_hu[0]), 0, 1)


@pytest.mark.parametrize("shape, spacing_mm, size", [((512, 512), (0.45, 0.45), 128), ((300, 420), (0.8, 0.5), 256),
                                                     ((64, 48), (3.0, 3.0), 128), ((7, 900), (0.3, 0.25), 32)])
@pytest.mark.parametrize("center", [True, False])
def test_banded_resampling_equals_the_dense_matrices(shape, spacing_mm, size, center):
    hu = np.random.default_rng(size).normal(0, 500, shape).astype(np.float32)
    grid = Grid(size=size, spacing_mm=1.875, window_hu=(-1024.0, 3072.0))
    np.testing.assert_allclose(to_model(hu, spacing_mm, grid, center=center),
                               _dense_reference(hu, spacing_mm, grid, center), atol=2e-6)


# ----------------------------------------------------------------------------------------- the HU map
def test_ct_map_round_trips_the_whole_ct_range():
    from ctgen.images.preprocess import CT_MAP

    hu = np.linspace(-1024, 3072, 4097, dtype=np.float32)
    unit = CT_MAP.to_unit(hu)
    assert unit.dtype == np.float32 and unit[0] == 0.0 and unit[-1] == 1.0 and np.all(np.diff(unit) > 0)
    assert np.abs(CT_MAP.to_hu(unit) - hu).max() < 0.05
    brain = (hu >= -50) & (hu <= 250)
    assert np.ptp(unit[brain]) > 0.85  # the brain range keeps most of the model's range
    assert CT_MAP.to_hu(np.array([0.0, 1.0, 2.0, -1.0])).tolist() == [-1024.0, 3072.0, 3072.0, -1024.0]


def test_window_cards_keep_their_plain_window():
    from ctgen.images.preprocess import HUMap

    grid = Grid.from_card({"image_size": 64, "spacing_mm": 3.75, "window_hu": [-50, 250]})
    assert grid.hu_map == HUMap.window(-50, 250) and grid.to_card() == {"image_size": 64, "spacing_mm": 3.75,
                                                                         "window_hu": [-50.0, 250.0]}
    hu = np.array([[-1000.0, 100.0, 1600.0]], np.float32)
    unit = grid.hu_map.to_unit(hu)
    assert unit.tolist() == [[0.0, 0.5, 1.0]] and grid.hu_map.to_hu(unit).tolist() == [[-50.0, 100.0, 250.0]]


def test_hu_map_cards_round_trip_and_bad_maps_are_refused():
    from ctgen.images.preprocess import CT_MAP, HUMap

    grid = Grid(size=64, spacing_mm=3.75, hu_map=CT_MAP)
    card = grid.to_card()
    assert card["window_hu"] == [-1024.0, 3072.0] and card["hu_map"]["kind"] == "piecewise-linear"
    assert Grid.from_card(card) == grid
    for knots in [((0.0, 1.0), (0.0, 0.5)), ((1.0, 0.0), (0.0, 1.0)), ((0.0, 5.0, 2.0), (0.0, 0.5, 1.0))]:
        with pytest.raises(InputError, match="bad HU map"):
            HUMap(*knots)
    with pytest.raises(InputError, match="unknown HU map"):
        Grid.from_card({**card, "hu_map": {"kind": "spline"}})
# ------------------------------------------------------------------ hostile spacings (issue 15, item 1)
@pytest.mark.parametrize("spacing_mm", [(1e-4, 1e-4), (1e-5, 1.0), (1e-300, 1e-300), (1e-320, 1e-320), (25.0, 25.0),
                                        (float("inf"), 1.0), (-1.0, -1.0)])
def test_implausible_spacing_is_refused_before_any_work(spacing_mm):
    with pytest.raises(InputError, match="outside 0.05 to 20 mm"):
        to_model(np.zeros((512, 512), np.float32), spacing_mm, GRID_128)


@pytest.mark.parametrize("bad", [{"spacing_mm": 1e300}, {"spacing_mm": 1e-4}, {"spacing_mm": float("nan")},
                                 {"size": 5000}])
def test_implausible_grids_are_refused(bad):
    with pytest.raises(InputError, match="bad model grid"):
        Grid(**bad)


@pytest.mark.parametrize("shape, spacing_mm, grid", [
    ((512, 512), (0.05, 0.05), Grid(size=256, spacing_mm=20.0)),  # 400 input pixels per model pixel
    ((512, 512), (20.0, 20.0), Grid(size=256, spacing_mm=0.05)),
    ((1, 65535), None, Grid(size=256, spacing_mm=1.0)),  # the widest image a header can describe
    ((4, 16384), (0.05, 0.05), Grid(size=256, spacing_mm=20.0)),
])
def test_resampling_at_the_limits_stays_small(shape, spacing_mm, grid):
    import tracemalloc

    hu = np.random.default_rng(0).normal(0, 500, shape).astype(np.float32)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the missing spacing
            image = to_model(hu, spacing_mm, grid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.shape == (grid.size, grid.size) and np.isfinite(image).all()
    assert peak < 160 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_huge_finite_values_give_no_numpy_warnings():
    hu = np.full((64, 64), 3e38, np.float32)
    hu[::2] = -3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = to_model(hu, (1.0, 1.0), GRID_128)
    assert np.isfinite(image).all()


def test_ct_map_outputs_keep_air_and_bone_for_head_masks():
    from ctgen.images.preprocess import CT_MAP

    grid = Grid(size=64, spacing_mm=3.75, hu_map=CT_MAP)
    hu = np.full((256, 256), -1000.0, np.float32)
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - 128, xx - 128)
    hu[r < 100] = 1600.0  # skull
    hu[r < 90] = 35.0  # brain
    back = from_model(to_model(hu, (0.9375, 0.9375), grid), grid)
    assert back.min() < -990 and back.max() > 1000  # air and bone come back as HU
    head = back > -500
    assert 0.1 < head.mean() < 0.9  # a head mask on ctgen's own output is a head, not the whole frame
