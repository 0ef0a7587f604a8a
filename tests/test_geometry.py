"""ctgen.images.geometry: connected components, the head mask without table or head holder, centring, the brain rule
and the checks of slices against a model's training data."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from conftest import head_hu
from ctgen.io.dicom import read_slice
from ctgen.images.geometry import (
    BRAIN_FRACTION_MIN, _fill_holes, brain_fraction, head_centroid, head_mask, intracranial_mask, label,
    slice_warnings,
)


def _plain_centroid(hu: np.ndarray) -> np.ndarray:
    return np.argwhere(hu > -500).mean(axis=0)


def test_label_matches_scipy_on_random_masks():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = rng.random((rng.integers(1, 40), rng.integers(1, 40))) < rng.uniform(0.1, 0.9)
        for connectivity, structure in ((8, np.ones((3, 3))), (4, None)):
            labels, count = label(mask, connectivity)
            expected, expected_count = ndimage.label(mask, structure=structure)
            assert count == expected_count
            np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_label_by_hand():
    mask = np.array([[1, 0, 0, 1],
                     [0, 1, 0, 1],
                     [0, 0, 0, 0],
                     [1, 1, 0, 1]], bool)
    labels, count = label(mask)
    assert count == 4 and labels[0, 0] == labels[1, 1] and labels[0, 3] == labels[1, 3]
    assert label(mask, 4)[1] == 5
    assert label(np.zeros((3, 3), bool))[1] == 0
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    assert _fill_holes(ring).all()


def _with_table(hu: np.ndarray, spacing_mm: float, gap_mm: float, thickness_mm: float = 4.0,
                holder: bool = True) -> np.ndarray:
    """A table line across the field below the head (and a U-shaped head holder around its back)."""
    out = hu.copy()
    rows = np.flatnonzero((hu > -500).any(axis=1))
    top = rows[-1] + int(round(gap_mm / spacing_mm))
    out[top : top + max(1, int(round(thickness_mm / spacing_mm))), :] = 250.0
    if holder:
        yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1]]
        cy, cx = np.argwhere(hu > -500).mean(axis=0)
        radius = np.hypot((yy - cy) / 1.15, xx - cx)
        outer = (rows[-1] - rows[0]) / 2 / 1.15 + 12 / spacing_mm
        shell = (radius > outer) & (radius < outer + 3 / spacing_mm) & (yy > cy)
        out[shell] = 150.0
    return out


@pytest.mark.parametrize("gap_mm", [6.0, 15.0, 40.0])
def test_a_table_line_does_not_move_the_centre(gap_mm):
    spacing = 0.45
    hu = head_hu(512, shift=10.0, seed=1)
    hu[hu > -500] = np.maximum(hu[hu > -500], 20.0)  # keep the scalp-free phantom solid
    table = _with_table(hu, spacing, gap_mm)
    alone = np.array(head_centroid(hu, (spacing, spacing)))
    np.testing.assert_allclose(alone, _plain_centroid(hu), atol=1e-9)  # the head alone: the exact centroid
    moved_mm = np.hypot(*(np.array(head_centroid(table, (spacing, spacing))) - alone)) * spacing
    plain_mm = np.hypot(*(_plain_centroid(table) - alone)) * spacing
    print(f"gap {gap_mm} mm: centre moved {moved_mm:.3f} mm by the table (plain body centroid: {plain_mm:.1f} mm)")
    assert moved_mm < 2.0 and plain_mm > 2.0  # the plain body centroid would fail the 2 mm criterion
    mask = head_mask(table, (spacing, spacing))
    assert not mask[table == 250.0].any() and not mask[table == 150.0].any()


def test_the_head_holder_of_a_real_scan_is_left_out():
    ct = read_slice(get_testdata_file("693_J2KI.dcm"))  # a real head CT in a U-shaped head holder
    labels, count = label(ct.hu > -500)
    sizes = np.bincount(labels.ravel())[1:]
    assert count > 2 and sorted(sizes)[-2] > 1000  # the holder's two arms are sizeable components
    head = labels == 1 + int(np.argmax(sizes))
    mask = head_mask(ct.hu, ct.spacing_mm)
    outside = (labels > 0) & ~head
    assert mask[head].mean() > 0.99 and not mask[outside & (np.bincount(labels.ravel())[labels] > 1000)].any()
    centre = np.array(head_centroid(ct.hu, ct.spacing_mm))
    np.testing.assert_allclose(centre, np.argwhere(head).mean(axis=0), atol=0.5)
    assert np.hypot(*(_plain_centroid(ct.hu) - centre)) * ct.spacing_mm[0] > 1.5  # the holder used to pull it
    single = read_slice(get_testdata_file("J2K_pixelrep_mismatch.dcm"))  # a head with nothing beside it
    # the same, within a quarter pixel: the thin tips of the ears fall outside the head's cells
    np.testing.assert_allclose(head_centroid(single.hu, single.spacing_mm), _plain_centroid(single.hu), atol=0.25)


def test_brain_fraction_rule():
    hu = head_hu(160)
    assert brain_fraction(hu, (1.5, 1.5)) > 0.5
    soft = hu.copy()
    soft[soft > 300] = 40.0  # no skull: a slice below the skull base
    assert brain_fraction(soft, (1.5, 1.5)) == 0.0
    assert brain_fraction(np.full((32, 32), -1000.0)) == 0.0
    real = read_slice(get_testdata_file("693_J2KI.dcm"))
    assert brain_fraction(real.hu, real.spacing_mm) > 0.3
    neck = read_slice(get_testdata_file("CT_small.dcm"))  # a slice through a vertebra: no brain
    assert brain_fraction(neck.hu, neck.spacing_mm) < BRAIN_FRACTION_MIN


def test_slice_warnings():
    assert slice_warnings(head_hu(160), (1.5, 1.5), 128, 1.875, (1, 0, 0, 0, 1, 0)) == []
    neck = read_slice(get_testdata_file("CT_small.dcm"))
    found = slice_warnings(neck.hu, neck.spacing_mm, 128, 1.875, neck.orientation)
    assert len(found) == 2 and "field of view 85 mm" in found[0] and "no brain" in found[1]
    coarse = slice_warnings(head_hu(40), (6.0, 6.0), 128, 1.875)
    assert any("pixel spacing 6.00 mm" in text for text in coarse)
    coronal = slice_warnings(head_hu(160), (1.5, 1.5), 128, 1.875, (1, 0, 0, 0, 0, -1))
    assert coronal == ["not axial (slice normal 90° from the head-foot axis)"]


def test_intracranial_mask_is_the_skulls_inside():
    hu = head_hu(160)  # brain inside r < 0.9 of the ellipse, skull ring to r = 1
    yy, xx = np.mgrid[:160, :160]
    r = np.hypot((yy - 80) / (0.42 * 160), (xx - 80) / (0.34 * 160))
    cavity = intracranial_mask(hu, (1.5, 1.5))
    assert cavity[r < 0.85].all() and not cavity[r > 0.9].any()
    shrunk = intracranial_mask(hu, (1.5, 1.5), margin_mm=3.0)  # two pixels
    assert shrunk[r < 0.8].all() and not shrunk[r > 0.87].any()
    neck = hu.copy()
    neck[neck > 300] = 40.0  # no skull
    assert not intracranial_mask(neck, (1.5, 1.5)).any()
    assert not intracranial_mask(np.full((32, 32), -1000.0)).any()
