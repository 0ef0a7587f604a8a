"""Sharpness and anatomy kept: what of the originals' detail and contrast reconstructions and samples keep.

Sharpness, on HU images (N, S, S) clipped to the brain window WINDOW_HU (so bone edges do not swamp the brain):
    radial power spectrum  P(r) = mean over images of |DFT(image − its mean)|², averaged over the 2-D
                           frequencies whose radius falls in bins of 1/S cycles/px
    band power ratio       Σ_{f in band} P_other(f) / Σ_{f in band} P_original(f) for each of BANDS (cycles/px,
                           radius lo <= |f| < hi): 1 keeps the originals' detail, below 1 is blur, above 1 is
                           added texture or noise. A Gaussian blur of σ px multiplies the power by
                           exp(−4π²σ²|f|²) (``gaussian_band_ratio``).
    period-2 peak          the power at (0.5, 0.5) and at (0.5, 0) cycles/px (the checkerboard of transposed
                           convolutions; (0.5, 0) the larger of it and (0, 0.5)) over the mean power of the 8
                           frequencies around each: about 1 without a checkerboard
    log frequency distance LFD = log(1 + (1/S²) Σ_f |DFT(x̂) − DFT(x)|²) per pair (Jiang et al. 2021), images in
                           window units [0, 1]; 0 for an identity (pairs only: reconstructions).

Anatomy kept (pairs: reconstructions against their originals; every mask comes from the original):
    intracranial  pixels that bone (>= BONE_HU) encloses, eroded by S/ERODE_DIVISOR px (7.5 mm on a 240 mm
                  grid) so partial volume with the skull, and a blurred skull's halo, stay out
    tissue, CSF   intracranial pixels whose original, smoothed by a Gaussian of SMOOTH_PX (against noise),
                  lies in TISSUE_HU or CSF_HU; the means are of the unsmoothed images, clipped to WINDOW_HU
    grey, white   the same with GREY_HU and WHITE_HU (thresholds between the phantom's grey 39, white 27 and
                  CSF 6 HU: train.phantom.anatomy.BRAIN_HU; typical of real CT), or tissue maps when given
    contrast kept (mean_recon[tissue] − mean_recon[CSF]) / (mean_orig[tissue] − mean_orig[CSF]), pixels pooled
                  over the slices where CSF covers at least VENTRICLE_CSF_SHARE of the intracranial area (the
                  levels of the ventricles); grey/white the same with grey and white
    CSF Dice      2|A ∩ B| / (|A| + |B|) of the original's CSF mask and the reconstruction's (its own smoothed
                  HU in CSF_HU, inside the original's intracranial mask), pooled over the same slices
Numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from ctgen.errors import InputError
from ctgen.evaluation.metrics.realism import _outside  # pixels connected to the border: what bone does not enclose

__all__ = ["BANDS", "WINDOW_HU", "anatomy_kept", "band_power_ratios", "gaussian_band_ratio", "log_frequency_distance",
           "PERIOD_TWO_LIMIT", "decoder_period_two_peaks", "period_two_peaks", "radial_power_spectrum",
           "sharpness_report"]  # fmt: skip

BANDS = {"0.125-0.25": (0.125, 0.25), "0.25-0.5": (0.25, 0.5)}  # cycles/px
WINDOW_HU = (-50.0, 250.0)  # the brain window of the version-1 cards (and of the realism features)
BONE_HU, ERODE_DIVISOR, SMOOTH_PX = 150.0, 32, 1.0
TISSUE_HU, CSF_HU = (20.0, 60.0), (-10.0, 15.0)
GREY_HU, WHITE_HU = (34.0, 60.0), (20.0, 31.0)
VENTRICLE_CSF_SHARE = 0.03


def _images(hu: np.ndarray, what: str) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 3 or hu.shape[1] != hu.shape[2] or not len(hu):
        raise InputError(None, f"{what} must be HU images (N, S, S), got shape {hu.shape}")
    return hu


def _radius(size: int) -> np.ndarray:
    """|f| in cycles/px of every DFT coefficient of an S x S image, (S, S)."""
    f = np.fft.fftfreq(size)
    return np.hypot(f[:, None], f[None, :])


def _power(hu: np.ndarray, window: tuple[float, float] | None = WINDOW_HU) -> np.ndarray:
    """Mean |DFT|² over images of the windowed (``window`` None: as they are), mean-subtracted images,
    float64 (S, S)."""
    clipped = np.clip(hu, *window) if window is not None else hu
    clipped = clipped - clipped.mean(axis=(1, 2), keepdims=True)
    spectrum = np.fft.fft2(clipped)
    return (spectrum.real**2 + spectrum.imag**2).mean(axis=0)


def radial_power_spectrum(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, power): bin centres in cycles/px, float64 (S/2,), and the mean power in each bin of 1/S
    (HU² per coefficient, images clipped to WINDOW_HU) of HU images (N, S, S). Raises InputError."""
    hu = _images(hu, "images")
    size = hu.shape[-1]
    bins = np.floor(_radius(size) * size + 0.5).astype(int).ravel()  # bin k: |f| within 1/(2S) of k/S
    power = _power(hu).ravel()
    keep = bins < size // 2 + 1
    totals = np.bincount(bins[keep], weights=power[keep], minlength=size // 2 + 1)
    counts = np.bincount(bins[keep], minlength=size // 2 + 1)
    return np.arange(1, size // 2 + 1) / size, totals[1:] / np.maximum(counts[1:], 1)


def band_power_ratios(original_hu: np.ndarray, other_hu: np.ndarray) -> dict[str, float]:
    """Power of ``other_hu`` over that of ``original_hu`` in each of BANDS (module docstring); both HU images
    (N, S, S) and (M, S, S) of one grid (samples need not pair with the originals). Raises InputError."""
    original, other = _images(original_hu, "originals"), _images(other_hu, "images")
    if original.shape[1:] != other.shape[1:]:
        raise InputError(None, f"images of {other.shape[1:]} against originals of {original.shape[1:]}")
    radius = _radius(original.shape[-1])
    reference, power = _power(original), _power(other)
    ratios = {}
    for name, (lo, hi) in BANDS.items():
        band = (radius >= lo) & (radius < hi)
        ratios[name] = float(power[band].sum() / reference[band].sum()) if reference[band].sum() > 0 else math.nan
    return ratios


def gaussian_band_ratio(sigma_px: float, size: int) -> dict[str, float]:
    """What ``band_power_ratios`` gives for a Gaussian blur of ``sigma_px`` of images with a flat spectrum:
    the mean over each band's frequencies of the squared transfer function exp(−4π²σ²|f|²)."""
    radius = _radius(size)
    transfer = np.exp(-4 * math.pi**2 * sigma_px**2 * radius**2)
    return {name: float(transfer[(radius >= lo) & (radius < hi)].mean()) for name, (lo, hi) in BANDS.items()}


def period_two_peaks(images: np.ndarray, window: tuple[float, float] | None = WINDOW_HU) -> dict[str, float]:
    """The period-2 peaks (module docstring) of images (N, S, S): HU clipped to ``window``, or any values as
    they are with ``window`` None (a decoder's logits). Raises InputError."""
    power = _power(_images(images, "images"), window)
    size, half = power.shape[0], power.shape[0] // 2

    def peak(row: int, col: int) -> float:
        around = [power[(row + dr) % size, (col + dc) % size] for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
        return float(power[row, col] / max(np.mean(around), 1e-300))

    return {"(0.5, 0.5)": peak(half, half), "(0.5, 0)": max(peak(half, 0), peak(0, half))}


PERIOD_TWO_LIMIT = 5.0  # a shipped decoder's peaks stay under this (a checkerboard of ±3 HU scores > 10)


def decoder_period_two_peaks(model, draws: int = 64, seed: int = 0) -> dict[str, float]:
    """The period-2 peaks of a decoder's own texture: ``model`` (``ctgen.runtime.model.Model``) decodes ``draws``
    codes from N(0, I) drawn with ``seed``, scored in HU at the brain window. The check a shipped decoder passes
    (every peak under PERIOD_TWO_LIMIT), in the test suite and in ``studies.retrain``."""
    from ctgen.images.preprocess import from_model

    z = np.random.default_rng(seed).standard_normal((draws, model.latent_size)).astype(np.float32)
    return period_two_peaks(from_model(model.decode(z)[:, 0], model.grid))


def log_frequency_distance(original_hu: np.ndarray, recon_hu: np.ndarray) -> np.ndarray:
    """LFD per pair, float64 (N,), of HU images (N, S, S) in window units [0, 1] (module docstring)."""
    original, recon = _images(original_hu, "originals"), _images(recon_hu, "reconstructions")
    if original.shape != recon.shape:
        raise InputError(None, f"reconstructions {recon.shape} do not pair with originals {original.shape}")
    lo, hi = WINDOW_HU
    difference = np.fft.fft2((np.clip(recon, lo, hi) - np.clip(original, lo, hi)) / (hi - lo))
    size = original.shape[-1]
    return np.log1p((difference.real**2 + difference.imag**2).sum(axis=(1, 2)) / size**2)


def _smooth(hu: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter through the DFT (circular: the border of a head slice is air)."""
    transfer = np.exp(-2 * math.pi**2 * sigma_px**2 * _radius(hu.shape[-1]) ** 2)
    return np.fft.ifft2(np.fft.fft2(hu) * transfer).real


def _intracranial(hu: np.ndarray) -> np.ndarray:
    bone = hu >= BONE_HU
    inside = ~bone & ~_outside(~bone)
    for _ in range(max(1, hu.shape[-1] // ERODE_DIVISOR)):
        inner = inside.copy()
        inner[:, 1:] &= inside[:, :-1]
        inner[:, :-1] &= inside[:, 1:]
        inner[:, :, 1:] &= inside[:, :, :-1]
        inner[:, :, :-1] &= inside[:, :, 1:]
        inside = inner
    return inside


def _within(hu: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (hu >= bounds[0]) & (hu <= bounds[1])


def _contrast_kept(original: np.ndarray, recon: np.ndarray, high: np.ndarray, low: np.ndarray) -> float:
    if not high.any() or not low.any():
        return math.nan
    kept = recon[high].mean() - recon[low].mean()
    return float(kept / (original[high].mean() - original[low].mean()))


def anatomy_kept(original_hu: np.ndarray, recon_hu: np.ndarray, tissue_maps: dict[str, np.ndarray] | None = None
                 ) -> dict:  # fmt: skip
    """Tissue-to-CSF and grey/white contrast kept and the CSF Dice (module docstring) of reconstructions
    (N, S, S) against their originals (N, S, S), HU. ``tissue_maps``: optional fractions "gm", "wm", "csf",
    each float (N, S, S) in [0, 1] on the same grid (the phantom's), used for the masks instead of thresholds
    (a pixel belongs to a tissue whose fraction exceeds 0.5). Values are None where no slice qualifies.
    Raises InputError."""
    original, recon = _images(original_hu, "originals"), _images(recon_hu, "reconstructions")
    if original.shape != recon.shape:
        raise InputError(None, f"reconstructions {recon.shape} do not pair with originals {original.shape}")
    inside = _intracranial(original)
    original, recon = np.clip(original, *WINDOW_HU), np.clip(recon, *WINDOW_HU)
    smooth_original, smooth_recon = _smooth(original, SMOOTH_PX), _smooth(recon, SMOOTH_PX)
    if tissue_maps is not None:
        grey, white, csf = (inside & (np.asarray(tissue_maps[name]) > 0.5) for name in ("gm", "wm", "csf"))
        tissue, masks = grey | white, "tissue maps"
    else:
        tissue, csf = inside & _within(smooth_original, TISSUE_HU), inside & _within(smooth_original, CSF_HU)
        grey, white = inside & _within(smooth_original, GREY_HU), inside & _within(smooth_original, WHITE_HU)
        masks = "HU thresholds on the original"
    share = csf.sum(axis=(1, 2)) / np.maximum(inside.sum(axis=(1, 2)), 1)
    levels = share >= VENTRICLE_CSF_SHARE
    recon_csf = inside & _within(smooth_recon, CSF_HU)
    overlap = (csf & recon_csf)[levels].sum()
    total = csf[levels].sum() + recon_csf[levels].sum()

    def kept(high: np.ndarray, low: np.ndarray, where: np.ndarray) -> float | None:
        value = _contrast_kept(original[where], recon[where], high[where], low[where])
        return None if math.isnan(value) else value

    return {"tissue_csf_contrast_kept": kept(tissue, csf, levels) if levels.any() else None,
            "csf_dice": float(2 * overlap / total) if total else None,
            "grey_white_contrast_kept": kept(grey, white, np.ones(len(original), bool)),
            "n_slices": len(original), "n_ventricle_slices": int(levels.sum()), "masks": masks,
            "rule": {"bone_hu": BONE_HU, "erode_px": max(1, original.shape[-1] // ERODE_DIVISOR), "smooth_px": SMOOTH_PX, "tissue_hu": list(TISSUE_HU),
                     "csf_hu": list(CSF_HU), "grey_hu": list(GREY_HU), "white_hu": list(WHITE_HU),
                     "ventricle_csf_share": VENTRICLE_CSF_SHARE}}  # fmt: skip


def sharpness_report(original_hu: np.ndarray, recon_hu: np.ndarray, samples_hu: dict[str, np.ndarray]) -> dict:
    """Band power ratios of reconstructions and of each set of samples against the originals, the LFD of the
    reconstructions (mean), and their anatomy kept; JSON-ready. All HU images (N, S, S) on one grid."""
    lfd = log_frequency_distance(original_hu, recon_hu)
    return {"bands_cycles_per_px": {name: list(band) for name, band in BANDS.items()}, "window_hu": list(WINDOW_HU),
            "band_power_ratio": {"reconstructions": band_power_ratios(original_hu, recon_hu),
                                 **{f"samples_{name}": band_power_ratios(original_hu, hu)
                                    for name, hu in samples_hu.items()}},
            "period_two_peak": {"originals": period_two_peaks(original_hu), "reconstructions": period_two_peaks(recon_hu),
                                **{f"samples_{name}": period_two_peaks(hu) for name, hu in samples_hu.items()}},
            "log_frequency_distance": float(lfd.mean()), "n_originals": len(original_hu),
            "anatomy": anatomy_kept(original_hu, recon_hu)}  # fmt: skip
