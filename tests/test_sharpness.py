"""ctgen.evaluation.metrics.sharpness on known answers: identity, Gaussian blurs of known σ, flattened and halved contrast."""

from __future__ import annotations

import numpy as np
import pytest

from ctgen.errors import InputError
from ctgen.evaluation.metrics.sharpness import (
    BANDS,
    anatomy_kept,
    band_power_ratios,
    gaussian_band_ratio,
    log_frequency_distance,
    radial_power_spectrum,
    sharpness_report,
)


def noise_images(count: int = 16, size: int = 128, seed: int = 0) -> np.ndarray:
    """White noise around 100 HU (σ 20): a flat spectrum, never clipped by the brain window."""
    return 100.0 + 20.0 * np.random.default_rng(seed).standard_normal((count, size, size))


def head(size: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A disc head: air outside, a skull ring of 1000 HU, white matter 27 HU, a grey rim 39 HU and two CSF
    ventricles 6 HU; (S, S) HU and its tissue maps."""
    y, x = (np.mgrid[:size, :size] - (size - 1) / 2) / (size / 2)
    r = np.hypot(x, y)
    hu = np.full((size, size), -1000.0)
    hu[r < 0.9] = 1000.0
    brain = r < 0.8
    grey = brain & (r >= 0.6)
    csf = brain & ((np.hypot(x - 0.2, y / 2) < 0.12) | (np.hypot(x + 0.2, y / 2) < 0.12))
    white = brain & ~grey & ~csf
    hu[white], hu[grey], hu[csf] = 27.0, 39.0, 6.0
    return hu, {"gm": grey.astype(float), "wm": white.astype(float), "csf": csf.astype(float)}


def test_identity_keeps_every_band_and_has_zero_distance():
    images = noise_images(4, 64)
    assert band_power_ratios(images, images) == {name: pytest.approx(1.0) for name in BANDS}
    assert np.allclose(log_frequency_distance(images, images), 0.0)
    frequencies, power = radial_power_spectrum(images)
    assert frequencies[0] == 1 / 64 and frequencies[-1] == 0.5 and len(power) == 32
    assert power.mean() == pytest.approx(64**2 * 20.0**2, rel=0.05)  # white noise: flat at S²σ²
    assert power[len(power) // 2 :].mean() == pytest.approx(power[:len(power) // 2].mean(), rel=0.1)


# σ >= 1 px: below, the sampled kernel's aliasing lifts the top band above the continuous Gaussian's (σ 0.6:
# 0.18 against 0.14)
@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0])
def test_gaussian_blur_gives_the_predicted_band_ratios(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    images = noise_images()
    blurred = np.stack([ndimage.gaussian_filter(image, sigma, mode="wrap", truncate=5.0) for image in images])
    measured, predicted = band_power_ratios(images, blurred), gaussian_band_ratio(sigma, 128)
    for name in BANDS:
        assert measured[name] == pytest.approx(predicted[name], rel=0.04), (name, measured, predicted)
    assert measured["0.25-0.5"] < measured["0.125-0.25"] < 1


def test_noise_raises_the_ratio_above_one_and_the_distance_above_zero():
    images = noise_images(4, 64)
    noisier = images + 10.0 * np.random.default_rng(9).standard_normal(images.shape)
    assert all(value > 1.1 for value in band_power_ratios(images, noisier).values())
    assert (log_frequency_distance(images, noisier) > 0).all()


def test_anatomy_identity_flattened_and_halved():
    hu, maps = head()
    noise = np.random.default_rng(0).normal(0, 2.0, (3, *hu.shape))  # scanner noise in the originals
    originals = hu[None] + noise * (hu[None] < 100)
    perfect = anatomy_kept(originals, originals)
    assert perfect["tissue_csf_contrast_kept"] == pytest.approx(1.0)
    assert perfect["grey_white_contrast_kept"] == pytest.approx(1.0)
    assert perfect["csf_dice"] == pytest.approx(1.0) and perfect["n_ventricle_slices"] == 3
    brain = (hu > -500) & (hu < 100)
    flat = np.where(brain, originals[:, brain].mean(), originals)  # the smooth grey head of issue 26
    flattened = anatomy_kept(originals, flat)
    assert abs(flattened["tissue_csf_contrast_kept"]) < 0.05 and flattened["csf_dice"] == 0.0
    halved = np.where(brain, 27.0 + 0.5 * (hu - 27.0), hu)[None].repeat(3, 0)  # contrast halved, noise removed
    kept = anatomy_kept(originals, halved)
    assert kept["tissue_csf_contrast_kept"] == pytest.approx(0.5, abs=0.05)
    assert kept["grey_white_contrast_kept"] == pytest.approx(0.5, abs=0.1)
    mapped = anatomy_kept(originals, halved, tissue_maps={name: np.repeat(m[None], 3, 0) for name, m in maps.items()})
    assert mapped["masks"] == "tissue maps" and mapped["grey_white_contrast_kept"] == pytest.approx(0.5, abs=0.05)


def test_no_ventricles_no_tissue_csf_figure():
    hu, _ = head()
    hu[(hu > 0) & (hu < 10)] = 27.0  # fill the ventricles
    result = anatomy_kept(hu[None], hu[None])
    assert result["tissue_csf_contrast_kept"] is None and result["n_ventricle_slices"] == 0


def test_report_and_bad_shapes():
    hu, _ = head()
    originals = np.repeat(hu[None], 2, 0)
    report = sharpness_report(originals, originals, {"standard": originals[:1]})
    assert report["band_power_ratio"]["samples_standard"]["0.25-0.5"] == pytest.approx(1.0)
    assert report["log_frequency_distance"] == 0.0 and report["anatomy"]["csf_dice"] == 1.0
    assert report["period_two_peak"]["reconstructions"] == report["period_two_peak"]["originals"]
    with pytest.raises(InputError, match="shape"):
        band_power_ratios(originals[0], originals[0])
    with pytest.raises(InputError, match="pair"):
        anatomy_kept(originals, originals[:1])


def test_period_two_peaks_find_a_checkerboard_and_nothing_in_noise():
    from ctgen.evaluation.metrics.sharpness import period_two_peaks

    images = noise_images(96, 64)  # the Nyquist coefficients are real: few degrees of freedom per image
    clean = period_two_peaks(images)
    assert all(0.5 < value < 2.0 for value in clean.values()), clean
    rows, cols = np.indices((64, 64))
    checkered = period_two_peaks(images + 3.0 * (-1.0) ** (rows + cols))  # ±3 HU against noise of σ 20
    striped = period_two_peaks(images + 3.0 * (-1.0) ** cols)
    assert checkered["(0.5, 0.5)"] > 10 and checkered["(0.5, 0)"] < 2
    assert striped["(0.5, 0)"] > 10 and striped["(0.5, 0.5)"] < 2
    logits = period_two_peaks(images / 1000.0, window=None)  # any values, unclipped
    assert logits == pytest.approx(clean)
