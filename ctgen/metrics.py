"""What a model learned, in numbers: reconstruction, latent activity, disentanglement, memorisation.

numpy only (no torch, scipy or scikit-learn), pure functions on arrays. Disentanglement lives in
``ctgen.metrics_disentangle`` and is re-exported here, so ``from ctgen.metrics import mig`` works.

- Reconstruction: ``mae_hu`` (HU, inside the head), ``psnr`` and ``ssim`` (Wang et al. 2004) on images
  windowed to [0, 1] (``window_unit``, brain window by default); ``reconstruction_report`` does all three.
- Latents: ``kl_per_unit`` (nats), ``active_units`` by KL, ``active_units_by_variance`` (Burda et al.
  2016); ``latent_activity`` reports both.
- Memorisation: ``nearest_neighbour_distances`` and ``memorisation_report``.
"""

from __future__ import annotations

import numpy as np

from ctgen.errors import InputError
from ctgen.metrics_disentangle import (
    beta_vae_score,
    dci,
    discretize,
    disentanglement_report,
    factor_vae_score,
    mig,
    sap,
)
from ctgen.preprocess import BODY_THRESHOLD_HU, window_to_unit

__all__ = [
    "BRAIN_WINDOW",
    "window_unit",
    "head_mask",
    "mae_hu",
    "psnr",
    "ssim",
    "reconstruction_report",
    "kl_per_unit",
    "active_units",
    "units_by_kl",
    "mu_variance",
    "active_units_by_variance",
    "latent_activity",
    "discretize",
    "mig",
    "beta_vae_score",
    "factor_vae_score",
    "dci",
    "sap",
    "disentanglement_report",
    "downsample",
    "nearest_neighbour_distances",
    "memorisation_report",
]

BRAIN_WINDOW = (40.0, 80.0)  # (center, width) HU, as render.WINDOWS["brain"]


# --- reconstruction -------------------------------------------------------------------------------


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


def mae_hu(original_hu: np.ndarray, recon_hu: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error in HU over the pixels of ``mask`` (all images pooled, pixel-weighted).

    ``original_hu`` and ``recon_hu``: HU (H, W) or (N, H, W); ``mask``: bool of that shape, default
    ``head_mask(original_hu)``. Raises InputError for mismatched shapes or an empty mask.
    """
    original, recon = _images(original_hu, recon_hu, "mae_hu")
    mask = head_mask(original) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != original.shape or not mask.any():
        raise InputError(None, f"mae_hu needs a non-empty mask of shape {original.shape}, got {mask.shape}")
    return float(np.abs(original - recon)[mask].mean())


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


# --- latent activity ------------------------------------------------------------------------------


def _posterior(mu: np.ndarray, logvar: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or (logvar is not None and np.shape(logvar) != mu.shape):
        raise InputError(None, f"need mu and logvar of shape (N, L), got {mu.shape} and {np.shape(logvar)}")
    return mu, None if logvar is None else np.asarray(logvar, dtype=np.float64)


def kl_per_unit(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z_i|x) || N(0, 1)) per latent unit, averaged over the N images: float64 (L,), nats.

    ``mu``, ``logvar``: (N, L), the encoder's diagonal Gaussian (logvar = ln σ²);
    KL_i = mean_n 0.5 (mu² + exp(logvar) - logvar - 1). Sums to the model's KL term.
    """
    mu, logvar = _posterior(mu, logvar)
    return np.mean(0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0), axis=0)


def active_units(kl: np.ndarray, threshold: float = 0.01) -> int:
    """Number of units whose KL (nats, from ``kl_per_unit``) exceeds ``threshold``."""
    return int(np.sum(np.asarray(kl) > threshold))


def units_by_kl(kl: np.ndarray) -> list[int]:
    """Unit indices sorted by decreasing KL (ties: lower index first), as the model card stores them."""
    return [int(i) for i in np.argsort(-np.asarray(kl, dtype=np.float64), kind="stable")]


def mu_variance(mu: np.ndarray) -> np.ndarray:
    """Variance over the N images of each unit's posterior mean, Cov_x(E_q[z_i|x]): float64 (L,)."""
    mu, _ = _posterior(mu)
    return mu.var(axis=0)


def active_units_by_variance(mu: np.ndarray, threshold: float = 0.01) -> int:
    """Active units as Burda, Grosse & Salakhutdinov (2016) define them: Cov_x(E_q[z_i|x]) > ``threshold``.

    Counts units whose mean moves with the input. A unit at the prior (mu ≈ 0, logvar ≈ 0) is inactive
    by both this and the KL count; the two disagree when the posterior variance shrinks without the
    mean moving (KL > 0 but no information about x), which the variance count calls inactive.
    """
    return int(np.sum(mu_variance(mu) > threshold))


def latent_activity(mu: np.ndarray, logvar: np.ndarray, threshold: float = 0.01) -> dict:
    """Both activity measures for (N, L) posteriors: per-unit KL (nats) and mu variance, their counts."""
    kl = kl_per_unit(mu, logvar)
    variance = mu_variance(mu)
    return {
        "kl_per_unit": kl.tolist(),
        "kl_total": float(kl.sum()),
        "units_by_kl": units_by_kl(kl),
        "active_units": active_units(kl, threshold),
        "mu_variance": variance.tolist(),
        "active_units_by_variance": int(np.sum(variance > threshold)),
        "threshold": threshold,
    }


# --- memorisation ---------------------------------------------------------------------------------


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Block means of ``factor`` x ``factor`` pixels over the last two axes: (..., H // f, W // f).

    Rows and columns that do not fill a whole block are cropped. float32.
    """
    images = np.asarray(images, dtype=np.float32)
    if factor < 1 or images.ndim < 2:
        raise InputError(None, f"downsample needs images (..., H, W) and factor >= 1, got {images.shape}, {factor}")
    h, w = images.shape[-2] // factor, images.shape[-1] // factor
    cropped = images[..., : h * factor, : w * factor]
    return cropped.reshape(*images.shape[:-2], h, factor, w, factor).mean(axis=(-3, -1))


def nearest_neighbour_distances(
    queries: np.ndarray, reference: np.ndarray, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query (M, D) to its nearest reference row (N, D).

    Returns (distances float64 (M,), indices int64 (M,)). Squared distances come from
    |q|² + |r|² - 2 q·r, a float32 matrix product over ``batch`` queries at a time (memory
    ~ batch x N floats); the winner's distance is then recomputed exactly in float64, so only
    near-ties (within float32 rounding) can pick a different, equally near, neighbour.
    """
    queries = np.asarray(queries)
    reference = np.asarray(reference)
    if queries.ndim != 2 or reference.ndim != 2 or queries.shape[1] != reference.shape[1] or not len(reference):
        raise InputError(None, f"need queries (M, D) and reference (N, D), got {queries.shape} and {reference.shape}")
    ref32 = reference.astype(np.float32)
    ref_norms = np.einsum("nd,nd->n", ref32, ref32)
    indices = np.empty(len(queries), dtype=np.int64)
    for lo in range(0, len(queries), max(1, batch)):
        chunk = queries[lo : lo + max(1, batch)].astype(np.float32)
        squared = ref_norms[None, :] - 2.0 * (chunk @ ref32.T)  # + |q|², constant per row
        indices[lo : lo + len(chunk)] = np.argmin(squared, axis=1)
    difference = queries.astype(np.float64) - reference[indices].astype(np.float64)
    return np.sqrt(np.einsum("md,md->m", difference, difference)), indices


def _flatten(images: np.ndarray, factor: int) -> np.ndarray:
    images = np.asarray(images)
    if factor > 1:
        images = downsample(images, factor)
    return images.reshape(len(images), -1)


def _summary(distances: np.ndarray) -> dict:
    return {"median": float(np.median(distances)), "p5": float(np.percentile(distances, 5)),
            "mean": float(distances.mean())}


def memorisation_report(
    samples: np.ndarray,
    train: np.ndarray,
    heldout: np.ndarray,
    *,
    downsample_factor: int = 1,
    quantile: float = 0.01,
    batch: int = 1024,
) -> dict:
    """Do generated samples sit closer to training images than unseen real images do?

    ``samples`` (M, ...), ``train`` (N, ...), ``heldout`` (H, ...): images (e.g. (M, S, S) in [0, 1];
    block-averaged by ``downsample_factor`` first) or latents, flattened to vectors; held-out images
    must come from patients outside ``train``. Each row's nearest-training-row Euclidean distance is
    summarised (median, 5th percentile, mean) for samples and for held-out images; the ratios
    sample/held-out fall well below 1 for a generator that copies. ``fraction_copied`` is the share of
    samples nearer to the training set than the ``quantile`` (1 %) of held-out distances: about
    ``quantile`` for a generator that draws new images from the data's distribution (blurry VAE
    samples usually score lower still), near 1 for one that replays training patients. Use a few
    hundred held-out images or more for a stable 1 % threshold.
    """
    flat = [_flatten(x, downsample_factor) for x in (samples, train, heldout)]
    if min(len(x) for x in flat) == 0:
        raise InputError(None, "memorisation_report needs non-empty samples, train and heldout sets")
    sample_distance, sample_index = nearest_neighbour_distances(flat[0], flat[1], batch)
    heldout_distance, _ = nearest_neighbour_distances(flat[2], flat[1], batch)
    threshold = float(np.quantile(heldout_distance, quantile))
    samples_summary, heldout_summary = _summary(sample_distance), _summary(heldout_distance)

    def ratio(key: str) -> float:
        return samples_summary[key] / heldout_summary[key] if heldout_summary[key] > 0 else float("inf")

    return {
        "sample_to_train": samples_summary,
        "heldout_to_train": heldout_summary,
        "median_ratio": ratio("median"),
        "p5_ratio": ratio("p5"),
        "threshold": threshold,
        "quantile": quantile,
        "fraction_copied": float(np.mean(sample_distance < threshold)),
        "distinct_train_neighbours": int(len(np.unique(sample_index))),
        "n_samples": len(flat[0]),
        "n_train": len(flat[1]),
        "n_heldout": len(flat[2]),
        "dimensions": int(flat[0].shape[1]),
    }
