"""ctgen.api: ``Generator`` on the tiny exported model — loading slices onto the grid, encoding (one call and
streamed), decoding, sampling, latents, traversals, interpolation, reconstruction with its errors, and with a card
that binds units to measured factors (conftest's ``bound_model``), reading, setting and editing those factors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from conftest import BINDING
from ctgen.api import Generator, load_generator
from ctgen.errors import ArgumentError, DicomError, InputError, ModelError
from ctgen.images.grid_reader import DISPLAY_WINDOW_HU, GridSlice, SliceWarning
from ctgen.latent import FactorSetting
from ctgen.evaluation.metrics.reconstruction import head_error
from ctgen.images.preprocess import from_model

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def generator(tiny_model_dir) -> Generator:
    return load_generator(tiny_model_dir, device="cpu")


@pytest.fixture
def bound_generator(bound_model) -> Generator:
    return load_generator(bound_model, device="cpu")


# ------------------------------------------------------------------------------------------ images and latents
def test_generator_shapes_and_determinism(generator):
    size, latent = generator.image_size, generator.latent_size
    samples = generator.sample(3, seed=7)
    assert samples.shape == (3, size, size) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, generator.sample(3, seed=7))
    lo, hi = generator.grid.window_hu
    assert samples.min() >= lo and samples.max() <= hi
    z = generator.latents(2, seed=1)
    np.testing.assert_array_equal(generator.decode(z), generator.decode(z))
    assert generator.decode(z[0]).shape == (1, size, size)
    assert generator.traverse(None, "top2", offsets=(-2.0, 0.0, 2.0)).shape == (6, size, size)
    assert generator.traverse(z[0], [0, 3], offsets=(1.0,)).shape == (2, size, size)
    path = generator.interpolate(z[0], z[1], steps=4, method="lerp")
    assert path.shape == (4, size, size)
    np.testing.assert_allclose(path[0], generator.decode(z[0])[0], atol=1e-3)
    assert generator.interpolate(z[0], z[1], steps=3).shape == (3, size, size)  # slerp by default
    assert generator.units_by_kl[0] == 0 and len(generator.kl_per_unit) == latent


def test_generator_encode_inputs(generator):
    from ctgen.io.dicom import read_slice

    mu_path = generator.encode(CT_SMALL)
    assert mu_path.shape == (1, generator.latent_size) and mu_path.dtype == np.float32
    np.testing.assert_allclose(generator.encode(read_slice(CT_SMALL)), mu_path, atol=1e-6)
    np.testing.assert_allclose(generator.encode([str(CT_SMALL), CT_SMALL]), np.repeat(mu_path, 2, axis=0), atol=1e-6)
    on_grid = generator.sample(2, seed=0)
    assert generator.encode(on_grid).shape == (2, generator.latent_size)
    assert generator.reconstruct(on_grid[0]).shape == (1, generator.image_size, generator.image_size)
    assert generator.encode(np.zeros((100, 90)), spacing_mm=0.5).shape == (1, generator.latent_size)


def test_generator_errors(generator, tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(DicomError, match="bad.dcm"):
        generator.encode(bad)
    with pytest.raises(InputError, match="spacing_mm"):
        generator.encode(np.zeros((100, 90)))
    with pytest.raises(InputError, match="lerp or slerp"):
        generator.interpolate(np.zeros(8), np.ones(8), method="cubic")
    with pytest.raises(InputError, match="width"):
        generator.decode(np.zeros((1, 3)))


def test_latents_are_seeded_and_the_streams_give_the_same_values(generator):
    z = generator.latents(5, seed=4, temperature=0.5)
    assert z.shape == (5, generator.latent_size) and z.dtype == np.float32
    assert generator.latents(0).shape == (0, generator.latent_size)
    np.testing.assert_array_equal(np.concatenate(list(generator.iter_latents(5, seed=4, temperature=0.5,
                                                                             batch_size=2))), z)
    batches = list(generator.iter_sample(5, seed=4, temperature=0.5, batch_size=2))
    assert [start for start, _ in batches] == [0, 2, 4]
    np.testing.assert_array_equal(np.concatenate([images for _, images in batches]), generator.decode(z))
    decoded = list(generator.iter_decode(z, batch_size=3))
    assert [start for start, _ in decoded] == [0, 3]
    np.testing.assert_array_equal(np.concatenate([images for _, images in decoded]), generator.decode(z))
    assert not generator.has_fitted_prior
    with pytest.raises(ArgumentError, match="unknown prior 'gaussian'"):
        generator.latents(1, prior="gaussian")
    with pytest.raises(ArgumentError, match="has no fitted prior"):
        generator.latents(1, prior="fitted")
    np.testing.assert_array_equal(generator.latents(3, seed=1, prior="standard"), generator.latents(3, seed=1))


def test_traverse_adds_each_offset_to_one_unit_at_a_time(generator):
    start = generator.latents(1, seed=2)[0]
    offsets = (-1.5, 0.0, 2.0)
    images = generator.traverse(start, [3, 0], offsets=offsets)
    for row, unit in enumerate([3, 0]):
        for column, offset in enumerate(offsets):
            z = start.copy()
            z[unit] += offset
            np.testing.assert_allclose(images[row * 3 + column], generator.decode(z)[0], atol=1e-4)
    assert generator.units("0-2,5") == [0, 1, 2, 5] and generator.units("top3") == generator.units_by_kl[:3]
    assert generator.units("all") == list(range(generator.latent_size))
    with pytest.raises(ArgumentError, match="must lie in 0-7"):
        generator.units([8])
    with pytest.raises(ArgumentError, match="one latent vector"):
        generator.traverse(np.zeros(3), [0])


def test_lerp_passes_through_the_midpoint(generator):
    a, b = generator.latents(2, seed=5)
    path = generator.interpolate(a, b, steps=3, method="lerp")
    np.testing.assert_allclose(path[1], generator.decode((a + b) / 2)[0], atol=1e-4)
    np.testing.assert_allclose(path[2], generator.decode(b)[0], atol=1e-4)


# ------------------------------------------------------------------------------------------ reading slices
def test_load_puts_a_slice_on_the_grid(generator, heads):
    size = generator.image_size
    loaded = generator.load(heads[0], with_hu=True)
    assert isinstance(loaded, GridSlice) and loaded.source == str(heads[0]) and loaded.warnings == ()
    assert loaded.image.shape == loaded.hu.shape == (size, size) and loaded.image.dtype == np.float32
    assert DISPLAY_WINDOW_HU[0] <= loaded.hu.min() and loaded.hu.max() <= DISPLAY_WINDOW_HU[1]
    assert loaded.hu.min() == pytest.approx(-1000.0, abs=1.0) and loaded.hu.max() > 500  # air and skull
    assert generator.load(heads[0]).hu is None
    np.testing.assert_array_equal(generator.load(heads[0], source="renamed").image, loaded.image)
    assert generator.load(heads[0], source="renamed").source == "renamed"
    on_grid = generator.load(loaded.hu)  # (S, S) without spacing: already on the grid
    assert on_grid.source == "array" and on_grid.image.shape == (size, size)
    with pytest.raises(InputError, match=r"expected an HU slice \(H, W\)"):
        generator.load(np.zeros((2, size, size)))


def test_slices_unlike_the_training_data_are_reported_not_refused(tiny_model_dir):
    generator = load_generator(tiny_model_dir, device="cpu")
    flat = np.full((generator.image_size,) * 2, 30.0, np.float32)  # no head, no brain
    with pytest.warns(SliceWarning, match="array: "):
        loaded = generator.load(flat)
    assert loaded.warnings
    heard = []
    generator.on_warnings = lambda source, found: heard.append((source, found))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generator.load(flat, source="flat")
    assert heard == [("flat", loaded.warnings)]


def test_the_python_api_picks_the_middle_slice(enhanced, volume, model):
    generator = load_generator(model, device="cpu")
    heard = []
    generator.on_notes = lambda source, note: heard.append((source, note))
    loaded = generator.load(volume)
    assert loaded.source == f"{volume}#1" and heard == [(f"{volume}#1", loaded.note)]
    np.testing.assert_array_equal(loaded.image, generator.load(volume, slice_index=1).image)
    assert generator.load(f"{volume}#1").note is None and len(heard) == 1
    assert generator.load(enhanced).source == f"{enhanced}#1"


def test_iter_encode_streams_in_order_and_hands_bad_files_on(generator, heads, tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    paths = [heads[0], bad, heads[1], heads[2]]
    errors = []
    batches = list(generator.iter_encode(paths, batch_size=2, on_error=lambda path, error: errors.append(path)))
    assert [batch.sources for batch in batches] == [[str(heads[0]), str(heads[1])], [str(heads[2])]]
    assert errors == [str(bad)]
    mu = np.concatenate([batch.mu for batch in batches])
    np.testing.assert_allclose(mu, generator.encode(heads[:3]), atol=1e-5)
    assert all(batch.logvar.shape == batch.mu.shape for batch in batches)
    with pytest.raises(DicomError, match="bad.dcm"):
        list(generator.iter_encode(paths))


def test_iter_reconstruct_measures_inside_the_head(generator, heads):
    items = list(generator.iter_reconstruct(heads[:3], batch_size=2))
    assert [item.slice.source for item in items] == [str(path) for path in heads[:3]]
    for item in items:
        np.testing.assert_allclose(item.target_hu, from_model(item.slice.image, generator.grid))
        np.testing.assert_allclose(item.recon_hu, generator.reconstruct(item.slice)[0], atol=1e-3)
        head = item.slice.hu > -500.0
        difference = (item.recon_hu - item.target_hu)[head].astype(np.float64)
        assert item.head_pixels == int(head.sum()) > 0
        assert item.mae_hu == pytest.approx(np.abs(difference).mean())
        assert item.rmse_hu == pytest.approx(np.sqrt(np.square(difference).mean()))
        assert item.rmse_hu >= item.mae_hu
        assert (item.mae_hu, item.rmse_hu) == (head_error(item.target_hu, item.recon_hu, head).mae_hu,
                                               head_error(item.target_hu, item.recon_hu, head).rmse_hu)


# ------------------------------------------------------------------------------------------ bound units
def test_read_and_set_factors(bound_generator):
    mu = np.zeros(bound_generator.latent_size, np.float32)
    mu[0] = 0.5
    assert bound_generator.read_factors(mu) == {"rotation_deg": 5.5, "head_width_max_mm": 140.0, "ventricle_mm2": 300.0}
    readings = bound_generator.read_factors(np.stack([mu, -mu]))
    np.testing.assert_allclose(readings["rotation_deg"], [5.5, -2.5])
    edited = bound_generator.set_factors(mu, {"rotation_deg": 9.5, "ventricle_mm2": 40})
    assert edited[0] == pytest.approx(1.0) and edited[2] == pytest.approx(-2.6) and mu[0] == 0.5  # a copy
    assert bound_generator.set_factors(mu, {"rotation_deg": 10}, relative=True)[0] == pytest.approx(0.5 + 10 / 8)
    mixed = bound_generator.set_factors(mu, [FactorSetting("rotation_deg", -4.0, True),
                                       FactorSetting("head_width_max_mm", 146)])
    assert bound_generator.read_factors(mixed)["rotation_deg"] == pytest.approx(1.5)
    assert mixed[1] == pytest.approx(1.0) and np.array_equal(mixed[3:], mu[3:])


def test_unbound_factors_and_unbound_models_are_refused(bound_generator, tiny_model_dir):
    mu = np.zeros(bound_generator.latent_size, np.float32)
    with pytest.raises(ArgumentError, match="bound: rotation_deg, head_width_max_mm, ventricle_mm2"):
        bound_generator.set_factors(mu, {"level": 0.5})
    plain = load_generator(tiny_model_dir)
    assert plain.read_factors(mu) == {}
    with pytest.raises(ModelError, match="no bound units"):
        plain.set_factors(mu, {"rotation_deg": 1})


def test_edit_sets_the_reading_and_measures(bound_generator, heads):
    edited = bound_generator.edit(heads[0], rotation_deg=10, relative=True)
    assert edited.requested["rotation_deg"] == pytest.approx(edited.reading_before["rotation_deg"] + 10)
    assert edited.reading_after["rotation_deg"] == pytest.approx(edited.requested["rotation_deg"], abs=1e-4)
    assert edited.reading_after["ventricle_mm2"] == pytest.approx(edited.reading_before["ventricle_mm2"])
    np.testing.assert_array_equal(edited.z[1:], edited.mu[1:])
    assert edited.hu.shape == (bound_generator.image_size,) * 2 and edited.slice.hu is not None
    assert edited.measured_before["rotation_deg"] == pytest.approx(0.0, abs=1.0)  # the upright synthetic head
    assert np.isnan(edited.measured_before["head_width_max_mm"])  # a series factor: not on one slice
    absolute = bound_generator.edit(heads[0], {"ventricle_mm2": 40})
    assert absolute.reading_after["ventricle_mm2"] == pytest.approx(40, abs=1e-3)


def test_traverse_rows_in_physical_units(bound_generator):
    rows = bound_generator.traverse_rows(None, "rotation_deg,3,head_width_max_mm", ["2", "rotation_deg=-20:20"], 5)
    assert [row.unit for row in rows] == [0, 3, 1]
    np.testing.assert_allclose(rows[0].values, [-20, -10, 0, 10, 20]) and not rows[0].relative
    np.testing.assert_allclose(rows[0].z, (np.array([-20, -10, 0, 10, 20]) - 1.5) / 8, rtol=1e-6)
    assert rows[1].bound is None and rows[1].values is None
    np.testing.assert_allclose(rows[1].offsets, [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(rows[2].values, 140 + 6 * np.array([-2, -1, 0, 1, 2]))  # 2 SD of the factor
    assert rows[2].relative and rows[2].reading == pytest.approx(140)
    assert bound_generator.decode_rows(None, rows).shape == (15, bound_generator.image_size, bound_generator.image_size)
    with pytest.raises(ArgumentError, match="ventricle_mm2: not a bound factor among the rows"):
        bound_generator.traverse_rows(None, "rotation_deg", ["ventricle_mm2=10"])


def test_traverse_rows_stay_within_what_the_factor_can_be(bound_generator):
    rows = bound_generator.traverse_rows(None, "ventricle_mm2", ["4"], 5)  # 300 mm2 ± 4 SD of 100 mm2
    # no negative area: the low side ends at 0 (300 - 400 would be -100) and its columns spread up to the reading
    # instead of repeating 0; the high side keeps its steps
    np.testing.assert_allclose(rows[0].values, [0, 150, 300, 500, 700])
    assert rows[0].reading == pytest.approx(300)


def test_factor_names_select_the_bound_unit_before_the_cards_labels(tiny_model_copy):
    card = json.loads((tiny_model_copy / "model.json").read_text())
    card["binding"] = BINDING
    card["metrics"]["unit_factors"] = {"5": "rotation_deg", "6": "level"}
    (tiny_model_copy / "model.json").write_text(json.dumps(card))
    generator = load_generator(tiny_model_copy)
    assert generator.units("rotation_deg,level,top2") == [0, 6, 1]
    with pytest.raises(ArgumentError, match="rotation_deg, head_width_max_mm, ventricle_mm2, level"):
        generator.units("skull_mm")
