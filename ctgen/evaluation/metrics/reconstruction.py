"""Reconstruction in HU and at display windows: MAE and RMSE inside the head, PSNR and SSIM (Wang et al. 2004).

numpy only, pure functions on arrays. ``head_error`` is the one reconstruction error in HU inside the head (the
pipeline's ``iter_reconstruct``, ``ctgen reconstruct`` and ``ctgen evaluate`` all use it; ``mae_hu`` is its MAE);
``psnr`` and ``ssim`` work on images windowed to [0, 1] (``window_unit``, brain window by default);
``reconstruction_report`` does MAE, PSNR and SSIM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctgen.errors import InputError
from ctgen.images.preprocess import BODY_THRESHOLD_HU, window_to_unit

__all__ = ["BRAIN_WINDOW", "HeadError", "window_unit", "head_mask", "head_error", "mae_hu", "psnr", "ssim", "reconstruction_report"]

from ctgen.defaults import BRAIN_WINDOW  # noqa: E402 - (center, width) HU


def window_unit(hu: np.ndarray, window: tuple[float, float] = BRAIN_WINDOW) -> np.ndarray:
    """HU (any shape) -> float32 in [0, 1] through a display window ``(center, width)`` in HU."""
    center, width = (float(v) for v in window)
    return window_to_unit(hu, (center - width / 2.0, center + width / 2.0))


def head_mask(hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """bool mask of the same shape: pixels above ``threshold_hu`` (-500 HU: tissue and bone, not air)."""
    return np.asarray(hu) > threshold_hu


def _images(a: np.ndarray, b: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise InputError(None, f"{name} needs two (H, W) or (N, H, W) arrays of one shape, got {a.shape} and {b.shape}")
    return a, b


@dataclass(frozen=True)
class HeadError:
    """A reconstruction error inside the head: ``mae_hu`` and ``rmse_hu`` in HU (None when ``pixels``, the
    pixels counted, is 0)."""

    mae_hu: float | None
    rmse_hu: float | None
    pixels: int


def head_error(
    original_hu: np.ndarray,
    recon_hu: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    clip_hu: tuple[float, float] | None = None,
) -> HeadError:
    """MAE and RMSE in HU between ``original_hu`` and ``recon_hu`` over the pixels of ``mask`` (all images pooled,
    pixel-weighted, in float64).

    ``original_hu`` and ``recon_hu``: HU (H, W) or (N, H, W); ``mask``: bool of that shape, default
    ``head_mask(original_hu)``. ``clip_hu`` (low, high) in HU clips both images first: the errors within a display
    window (``ctgen.images.preprocess.WINDOW_DEFAULT``, -50..250 HU, comparable across HU maps). An empty mask gives
    None for both. Raises InputError for mismatched shapes.
    """
    original, recon = _images(original_hu, recon_hu, "head_error")
    mask = head_mask(original) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != original.shape:
        raise InputError(None, f"head_error needs a mask of shape {original.shape}, got {mask.shape}")
    if clip_hu is not None:
        original, recon = np.clip(original, *clip_hu), np.clip(recon, *clip_hu)
    difference = (original - recon)[mask]
    if difference.size == 0:
        return HeadError(None, None, 0)
    return HeadError(float(np.abs(difference).mean()), float(np.sqrt(np.square(difference).mean())), difference.size)


def mae_hu(
    original_hu: np.ndarray,
    recon_hu: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    clip_hu: tuple[float, float] | None = None,
) -> float:
    """``head_error(...).mae_hu``: the mean absolute error in HU inside ``mask`` (default the head of
    ``original_hu``). Raises InputError for mismatched shapes or an empty mask."""
    error = head_error(original_hu, recon_hu, mask, clip_hu=clip_hu)
    if error.mae_hu is None:
        raise InputError(None, "mae_hu needs a non-empty mask")
    return error.mae_hu


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, 10 log10(data_range² / MSE), per image.

    ``a``, ``b``: (H, W) -> float, or (N, H, W) -> float64 (N,). Identical images give inf.
    """
    a, b = _images(a, b, "psnr")
    mse = np.mean((a - b) ** 2, axis=(-2, -1))
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(data_range**2 / mse)
    return float(value) if a.ndim == 2 else value


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2.0
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter_valid(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of (N, H, W) with weights ⊗ weights: (N, H - s + 1, W - s + 1)."""
    size = len(weights)
    rows = images.shape[1] - size + 1
    cols = images.shape[2] - size + 1
    along_rows = sum(w * images[:, t : t + rows, :] for t, w in enumerate(weights))
    return sum(w * along_rows[:, :, t : t + cols] for t, w in enumerate(weights))


def ssim(
    a: np.ndarray, b: np.ndarray, data_range: float = 1.0, *, window_size: int = 11, sigma: float = 1.5
) -> float | np.ndarray:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004), per image.

    SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)) with local statistics
    under an 11 x 11 Gaussian window (σ = 1.5, normalised to sum 1; the paper's weighted, not unbiased,
    moments), C1 = (0.01 L)², C2 = (0.03 L)², L = ``data_range``; the map is averaged over the
    positions where the window fits (no padding). The paper's values; no downsampling of large images.
    ``a``, ``b``: (H, W) -> float or (N, H, W) -> float64 (N,), both sides at least ``window_size``.
    Window CT images to [0, 1] first (``window_unit``) and pass ``data_range=1``.
    """
    a, b = _images(a, b, "ssim")
    if min(a.shape[-2:]) < window_size:
        raise InputError(None, f"ssim needs images of at least {window_size} x {window_size}, got {a.shape[-2:]}")
    x, y = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    weights = _gaussian_window(window_size, sigma)
    mu_x, mu_y = _filter_valid(x, weights), _filter_valid(y, weights)
    var_x = _filter_valid(x * x, weights) - mu_x**2
    var_y = _filter_valid(y * y, weights) - mu_y**2
    cov = _filter_valid(x * y, weights) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    value = index.mean(axis=(-2, -1))
    return float(value[0]) if a.ndim == 2 else value


def reconstruction_report(
    original_hu: np.ndarray,
    recon_hu: np.ndarray,
    *,
    window: tuple[float, float] = BRAIN_WINDOW,
    mask: np.ndarray | None = None,
) -> dict:
    """MAE (HU, inside ``mask``, default the head), PSNR (dB) and SSIM at ``window`` for HU (N, H, W).

    PSNR and SSIM are computed per image on the windowed [0, 1] images (so errors outside the
    window's HU range do not count) and averaged; a perfect image's infinite PSNR is capped at 100 dB.
    """
    original, recon = _images(original_hu, recon_hu, "reconstruction_report")
    original, recon = original.reshape(-1, *original.shape[-2:]), recon.reshape(-1, *recon.shape[-2:])
    mask = None if mask is None else np.asarray(mask, dtype=bool).reshape(original.shape)
    unit_original, unit_recon = window_unit(original, window), window_unit(recon, window)
    return {
        "mae_hu": mae_hu(original, recon, mask),
        "psnr_db": float(np.mean(np.minimum(psnr(unit_original, unit_recon, 1.0), 100.0))),
        "ssim": float(np.mean(ssim(unit_original, unit_recon, 1.0))),
        "window": [float(v) for v in window],
        "n_images": len(original),
    }
