"""Memorisation: do generated samples sit closer to the training images than unseen real images do?

numpy only: block downsampling, exact nearest-neighbour distances and ``memorisation_report``.
"""

from __future__ import annotations

import numpy as np

from ctgen.errors import InputError

__all__ = ["downsample", "nearest_neighbour_distances", "memorisation_report"]


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
