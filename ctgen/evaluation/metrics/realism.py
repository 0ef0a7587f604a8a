"""Realism of generated slices: improved precision and recall (Kynkäänniemi et al. 2019) in a fixed feature
space, and a plain anatomical check (a closed skull ring with brain inside it).

The feature space, fixed before any model was scored: every image (HU, on the model grid) is clipped to
-50 … 250 HU (the range of the version-1 cards' window, so models with and without a full-range HU map are
seen alike: air black, skull saturated white, grey/white matter and CSF in between), block-averaged to 64 x 64
pixels (layout, not noise) and projected on the first 64 principal components of the reference (held-out
real) slices. Precision: the share of generated images inside the k-NN balls (k = 3) of the real images;
recall: the share of real images inside the k-NN balls of the generated ones. numpy only.
"""

from __future__ import annotations

import numpy as np

from ctgen.defaults import BODY_THRESHOLD_HU
from ctgen.errors import InputError
from ctgen.evaluation.metrics.memorisation import downsample

__all__ = ["ANATOMY", "FEATURE_RANGE_HU", "FeatureSpace", "anatomy_check", "precision_recall", "realism_features"]

FEATURE_RANGE_HU = (-50.0, 250.0)
FEATURE_SIZE = 64  # pixels per side of the images the features are made of
FEATURE_COMPONENTS = 64
NEIGHBOURS = 3
# the anatomical check: thresholds in HU and shares (see anatomy_check)
ANATOMY = {"bone_hu": 150.0, "bridge_px": 1, "brain_hu": (0.0, 80.0), "head_hu": BODY_THRESHOLD_HU, "min_interior_of_head": 0.05,
           "min_brain_of_interior": 0.5}


def realism_features(hu: np.ndarray) -> np.ndarray:
    """HU images (N, S, S) -> float32 (N, 64²): clipped to FEATURE_RANGE_HU, in [0, 1], block-averaged to 64²
    (S a multiple of 64, or smaller than 64 and kept as it is)."""
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise InputError(None, f"realism features need HU images (N, S, S), got shape {hu.shape}")
    lo, hi = FEATURE_RANGE_HU
    unit = (np.clip(hu, lo, hi) - np.float32(lo)) / np.float32(hi - lo)
    factor = max(1, hu.shape[-1] // FEATURE_SIZE)
    return downsample(unit, factor).reshape(len(hu), -1)


class FeatureSpace:
    """PCA of the reference images' features: ``transform`` projects any images' features on its components."""

    def __init__(self, reference: np.ndarray, components: int = FEATURE_COMPONENTS):
        reference = np.asarray(reference, dtype=np.float64)
        if reference.ndim != 2 or len(reference) < NEIGHBOURS + 2:
            raise InputError(None, f"a feature space needs at least {NEIGHBOURS + 2} reference images")
        self.mean = reference.mean(axis=0)
        _, _, vt = np.linalg.svd(reference - self.mean, full_matrices=False)
        self.components = vt[: min(components, len(reference) - 1)]

    def transform(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) @ self.components.T


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    squared = np.einsum("nd,nd->n", points, points)
    distances = squared[:, None] + squared[None, :] - 2.0 * points @ points.T
    np.fill_diagonal(distances, np.inf)
    return np.sqrt(np.maximum(np.partition(distances, k - 1, axis=1)[:, k - 1], 0.0))


def _coverage(queries: np.ndarray, points: np.ndarray, radii: np.ndarray) -> float:
    """Share of queries inside at least one ball (points, radii)."""
    inside = 0
    for start in range(0, len(queries), 512):
        chunk = queries[start : start + 512]
        squared = (np.einsum("md,md->m", chunk, chunk)[:, None] + np.einsum("nd,nd->n", points, points)[None, :]
                   - 2.0 * chunk @ points.T)
        inside += int(np.any(np.sqrt(np.maximum(squared, 0.0)) <= radii[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, generated: np.ndarray, *, k: int = NEIGHBOURS) -> dict:
    """Improved precision and recall of ``generated`` against ``real`` (feature vectors (N, D) and (M, D)).

    precision = share of generated vectors within the k-NN radius of some real vector; recall = share of real
    vectors within the k-NN radius of some generated vector (Kynkäänniemi et al. 2019).
    """
    real, generated = np.asarray(real, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if min(len(real), len(generated)) <= k:
        raise InputError(None, f"precision and recall need more than {k} real and generated images")
    return {"precision": _coverage(generated, real, _radii(real, k)),
            "recall": _coverage(real, generated, _radii(generated, k)), "k": k,
            "n_real": len(real), "n_generated": len(generated)}


def _outside(free: np.ndarray) -> np.ndarray:
    """bool (N, H, W): pixels of ``free`` connected (4-neighbours, within ``free``) to the image border."""
    reach = np.zeros_like(free)
    for edge in (np.s_[:, 0, :], np.s_[:, -1, :], np.s_[:, :, 0], np.s_[:, :, -1]):
        reach[edge] = free[edge]
    while True:
        grown = reach.copy()
        grown[:, 1:, :] |= reach[:, :-1, :]
        grown[:, :-1, :] |= reach[:, 1:, :]
        grown[:, :, 1:] |= reach[:, :, :-1]
        grown[:, :, :-1] |= reach[:, :, 1:]
        grown &= free
        if np.array_equal(grown, reach):
            return reach
        reach = grown


def anatomy_check(hu: np.ndarray) -> dict:
    """A plain anatomical check of HU slices (N, S, S): a closed skull ring with brain inside it.

    Bone is HU >= 200 (max-pooled to at most 64² so that a thin ring stays closed); the interior is what the
    bone encloses (not connected to the border); the ring counts as closed when the interior holds at least
    5 % of the head (HU > -500), and the brain as inside when at least half the interior is 0 … 80 HU.
    Returns per-image flags and the share of images that fail either test.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise InputError(None, f"the anatomical check needs HU images (N, S, S), got shape {hu.shape}")
    factor = max(1, hu.shape[-1] // 64)
    size = hu.shape[-1] // factor
    blocks = hu[:, : size * factor, : size * factor].reshape(len(hu), size, factor, size, factor)
    bone = blocks.max(axis=(2, 4)) >= ANATOMY["bone_hu"]
    if ANATOMY["bridge_px"]:  # pinholes of one pixel (3.75 mm at 64² of 240 mm) do not open a ring
        grown = bone.copy()
        grown[:, 1:, :] |= bone[:, :-1, :]
        grown[:, :-1, :] |= bone[:, 1:, :]
        grown[:, :, 1:] |= bone[:, :, :-1]
        grown[:, :, :-1] |= bone[:, :, 1:]
        bone = grown
    interior = ~bone & ~_outside(~bone)
    head = (blocks.mean(axis=(2, 4)) > ANATOMY["head_hu"]).sum(axis=(1, 2))
    lo, hi = ANATOMY["brain_hu"]
    mean = blocks.mean(axis=(2, 4))
    brain = (interior & (mean >= lo) & (mean <= hi)).sum(axis=(1, 2))
    inside = interior.sum(axis=(1, 2))
    closed = inside >= ANATOMY["min_interior_of_head"] * np.maximum(head, 1)
    has_brain = brain >= ANATOMY["min_brain_of_interior"] * np.maximum(inside, 1)
    passed = closed & has_brain
    return {"fail_share": float(1.0 - passed.mean()) if len(hu) else 0.0, "n_images": len(hu),
            "skull_open": int((~closed).sum()), "no_brain_inside": int((closed & ~has_brain).sum()),
            "passed": passed.tolist(), "rule": dict(ANATOMY)}
