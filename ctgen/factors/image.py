"""Factors measured on one HU slice: the head's pose and size, the skull, CSF, contrast and noise. numpy only.

The head is ``ctgen.images.geometry.head_mask`` (table and head holder left out), the cranial cavity
``ctgen.images.geometry.intracranial_mask``. Pose and size are the head mask's second moments in mm: the axes of the
ellipse with the same moments (for a filled ellipse, exactly its axes). The skull is measured along rays from the
cavity's centre, between the half-maximum edges of the first bone run past the cavity; the tissue inside the
skull is measured on the cavity shrunk by ``INNER_MARGIN_MM`` (clear of the inner table's blur), lightly smoothed
against noise. Skull and tissue are measured only where the bone encloses brain (``ctgen.images.geometry.brain_fraction``).
"""

from __future__ import annotations

import math

import numpy as np

from ctgen.images.geometry import BONE_HU_MIN, BRAIN_FRACTION_MIN, brain_fraction, head_mask, intracranial_mask

__all__ = ["CSF_HU", "ENHANCING_HU", "measure_slice", "principal_axes"]

CSF_HU = (-10.0, 15.0)  # CSF is 0-15 HU; the lower bound leaves room for noise left after smoothing
ENHANCING_HU = (60.0, 300.0)  # above grey matter and haemorrhage's usual 40-60 HU, below bone
TISSUE_HU = (-100.0, BONE_HU_MIN)  # what counts towards the mean brain HU (no air, no bone)
INNER_MARGIN_MM = 2.0
SMOOTH_MM = 1.0  # half-width of the box that smooths the HU before CSF and contrast are counted
HEAD_AREA_MIN_MM2 = 1000.0  # a smaller body cross-section is not a head (neck, vertex cap): no pose or size
HEAD_PIXELS_MIN = 50
ROUND_RATIO = 1.03  # a head whose axes differ by less has no measurable long axis: no rotation
RAYS = 90
RAYS_MIN = 0.5  # the skull is measured where at least this share of rays cross a bone run next to the cavity
SKULL_GAP_MM = 3.0  # a ray's bone run must start this close to where it leaves the cavity
CENTRAL_RADIUS = 0.5  # the ventricles: CSF within this share of the cavity's equivalent ellipse (same moments)
INNER_PIXELS_MIN = 50
_NAN = math.nan


def principal_axes(mask: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)):
    """Second moments of a bool (H, W) mask in mm: (rotation_deg, length_mm, width_mm, elongation).

    ``rotation_deg``: angle from the image's vertical of the axis nearer to it (the long axis of a head longer
    than wide; the short one of a head wider than long, as at the skull base), counter-clockwise on screen,
    in [-45, 45]; length and width: the full axes (4 sqrt(eigenvalue)) of the ellipse with the same moments, the
    one nearer the image's vertical and the other (so a round head keeps its front-back length); elongation:
    long axis over short. None for an empty mask."""
    cov = _covariance_mm(mask, spacing_mm)
    if cov is None:
        return None
    cov[0, 1] = cov[1, 0] = -cov[0, 1]  # (row down, col) -> (x right, y up): swap the axes, flip y
    cov[0, 0], cov[1, 1] = cov[1, 1], cov[0, 0]
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    vx, vy = eigenvectors[:, 1]
    angle = math.degrees(math.atan2(-vx, vy))
    angle = (angle + 90.0) % 180.0 - 90.0
    if abs(vy) < abs(vx):  # the long axis is nearer the horizontal: measure the perpendicular one
        angle -= math.copysign(90.0, angle)
    short, long = (4.0 * math.sqrt(max(value, 0.0)) for value in eigenvalues)
    length, width = (long, short) if abs(vy) >= abs(vx) else (short, long)
    return angle, length, width, long / max(short, 1e-12)


def _covariance_mm(mask: np.ndarray, spacing_mm) -> np.ndarray | None:
    """Covariance float64 (2, 2) of the (row, col) positions in mm of a bool mask's pixels, from its row and
    column sums (no index arrays); None for an empty mask."""
    weights = mask.astype(np.float64)
    count = weights.sum()
    if count == 0:
        return None
    rows = np.arange(mask.shape[0]) * float(spacing_mm[0])
    cols = np.arange(mask.shape[1]) * float(spacing_mm[1])
    per_row, per_col = weights.sum(axis=1), weights.sum(axis=0)
    mean_row, mean_col = per_row @ rows / count, per_col @ cols / count
    row_row = per_row @ rows**2 / count - mean_row**2
    col_col = per_col @ cols**2 / count - mean_col**2
    row_col = rows @ (weights @ cols) / count - mean_row * mean_col
    return np.array([[row_row, row_col], [row_col, col_col]])


def measure_slice(hu: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> dict[str, float]:
    """Every image factor of an HU slice float (H, W) with pixel spacing (row, column) in mm: a dict of floats
    in FACTORS' order of the image factors. A factor that cannot be measured is NaN: pose and size without a
    head, mm and mm² without ``spacing_mm``, skull and tissue factors without brain enclosed by bone
    (``ctgen.images.geometry.brain_fraction`` under BRAIN_FRACTION_MIN: below the skull base, above the vertex, a neck),
    rotation for a round head."""
    hu = np.asarray(hu, dtype=np.float32)
    spacing = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    pixel_mm2 = spacing[0] * spacing[1]
    out = dict.fromkeys(("rotation_deg", "head_width_mm", "head_length_mm", "head_area_mm2", "skull_mm",
                         "csf_fraction", "ventricle_mm2", "brain_hu", "enhancing_fraction", "noise_hu"), _NAN)
    head = head_mask(hu, spacing_mm)
    pixels = int(head.sum())
    if pixels >= HEAD_PIXELS_MIN and (spacing_mm is None or pixels * pixel_mm2 >= HEAD_AREA_MIN_MM2):
        rotation, length, width, elongation = principal_axes(head, spacing)
        if elongation >= ROUND_RATIO:
            out["rotation_deg"] = rotation
        if spacing_mm is not None:
            out.update(head_width_mm=width, head_length_mm=length, head_area_mm2=pixels * pixel_mm2)
    if brain_fraction(hu, spacing_mm) < BRAIN_FRACTION_MIN:  # a cavity without brain: a vertebra, a sinus
        return out
    cavity = intracranial_mask(hu, spacing_mm)
    if spacing_mm is not None:
        out["skull_mm"] = _skull_mm(hu, cavity, spacing)
    inner = intracranial_mask(hu, spacing_mm, INNER_MARGIN_MM)  # in pixels without spacing
    if int(inner.sum()) < INNER_PIXELS_MIN:
        return out
    smooth = _box_mean(hu, max(0, int(round(SMOOTH_MM / min(spacing)))) if spacing_mm is not None else 1)
    values = smooth[inner]
    csf = (values >= CSF_HU[0]) & (values <= CSF_HU[1])
    out["csf_fraction"] = float(csf.mean())
    out["enhancing_fraction"] = float(((values >= ENHANCING_HU[0]) & (values <= ENHANCING_HU[1])).mean())
    tissue = hu[inner]
    tissue = tissue[(tissue > TISSUE_HU[0]) & (tissue < TISSUE_HU[1])]
    if tissue.size:
        out["brain_hu"] = float(tissue.mean(dtype=np.float64))
    out["noise_hu"] = _noise_hu(hu, inner)
    if spacing_mm is not None:
        out["ventricle_mm2"] = _ventricle_mm2(smooth, cavity, inner, spacing)
    return out


def _box_mean(hu: np.ndarray, half: int) -> np.ndarray:
    """Mean over a (2 half + 1)² box, the edges held; float32 (H, W)."""
    if half <= 0:
        return hu
    size = 2 * half + 1
    padded = np.pad(hu.astype(np.float64), half, mode="edge")
    sums = np.cumsum(np.cumsum(padded, axis=0), axis=1)
    sums = np.pad(sums, ((1, 0), (1, 0)))
    total = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size]
    return (total / (size * size)).astype(np.float32)


def _noise_hu(hu: np.ndarray, inner: np.ndarray) -> float:
    """Robust standard deviation of the pixel minus its 3 x 3 mean, scaled to a pixel's noise for white noise
    (the residual keeps 8/9 of its variance); the median absolute deviation ignores the anatomy's edges."""
    residual = (hu - _box_mean(hu, 1))[inner].astype(np.float64)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return 1.4826 * mad / math.sqrt(8.0 / 9.0)


def _ventricle_mm2(smooth: np.ndarray, cavity: np.ndarray, inner: np.ndarray, spacing) -> float:
    """Area (mm²) of CSF-range pixels in the centre of the cavity: inside the ellipse with the cavity's moments
    shrunk to CENTRAL_RADIUS (where the lateral and third ventricles lie, away from the sulci)."""
    rows, cols = np.nonzero(cavity)
    cov = _covariance_mm(cavity, spacing)
    grid_y, grid_x = np.nonzero(inner)
    offsets = np.stack([(grid_y - rows.mean()) * spacing[0], (grid_x - cols.mean()) * spacing[1]])
    # inside the moments' ellipse when offsetᵀ cov⁻¹ offset <= 4 (a filled ellipse's boundary)
    radius2 = np.einsum("in,ij,jn->n", offsets, np.linalg.pinv(cov), offsets) / 4.0
    central = radius2 <= CENTRAL_RADIUS**2
    values = smooth[grid_y[central], grid_x[central]]
    csf = (values >= CSF_HU[0]) & (values <= CSF_HU[1])
    return float(csf.sum()) * spacing[0] * spacing[1]


def _skull_mm(hu: np.ndarray, cavity: np.ndarray, spacing) -> float:
    """Median skull thickness (mm) along RAYS rays from the cavity's centroid, each run's length taken between
    its half-maximum edges and projected on the normal of the cavity's equivalent ellipse; NaN when fewer than
    RAYS_MIN of the rays meet bone within SKULL_GAP_MM of leaving the cavity."""
    rows, cols = np.nonzero(cavity)
    centre = np.array([rows.mean(), cols.mean()])
    precision = np.linalg.pinv(_covariance_mm(cavity, spacing))
    step_mm = 0.25 * min(spacing)
    reach_mm = math.hypot(hu.shape[0] * spacing[0], hu.shape[1] * spacing[1])
    distance = np.arange(0.0, reach_mm, step_mm)
    angles = np.linspace(0.0, 2.0 * math.pi, RAYS, endpoint=False)
    direction = np.stack([np.sin(angles), np.cos(angles)])  # (2, RAYS) in mm (row, col)
    ray_rows = np.rint(centre[0] + direction[0][:, None] * distance / spacing[0]).astype(np.int64)
    ray_cols = np.rint(centre[1] + direction[1][:, None] * distance / spacing[1]).astype(np.int64)
    valid = (ray_rows >= 0) & (ray_rows < hu.shape[0]) & (ray_cols >= 0) & (ray_cols < hu.shape[1])
    ray_rows, ray_cols = np.clip(ray_rows, 0, hu.shape[0] - 1), np.clip(ray_cols, 0, hu.shape[1] - 1)
    profile = np.where(valid, hu[ray_rows, ray_cols], np.float32(-1000.0))  # (RAYS, samples)
    in_cavity = cavity[ray_rows, ray_cols] & valid
    gap = int(round(SKULL_GAP_MM / step_mm))
    samples, rays = profile.shape[1], np.arange(RAYS)
    index = np.arange(samples)
    outside = ~in_cavity
    exit_index = np.argmax(outside, axis=1)  # where each ray leaves the cavity
    bone = profile >= BONE_HU_MIN
    candidate = bone & (index >= exit_index[:, None])
    start = np.argmax(candidate, axis=1)  # the first bone past it
    measured = outside.any(axis=1) & candidate.any(axis=1) & (start - exit_index <= gap)
    soft = ~bone & (index > start[:, None])
    stop = np.where(soft.any(axis=1), np.argmax(soft, axis=1), samples)  # the end of that bone run
    in_run = (index >= start[:, None]) & (index < stop[:, None])
    before = np.minimum(profile[rays, np.maximum(exit_index - gap, 0)], BONE_HU_MIN)
    after = np.minimum(profile[rays, np.minimum(stop + gap, samples - 1)], BONE_HU_MIN)
    peak = np.where(in_run, profile, -np.inf).max(axis=1)
    above_inner = in_run & (profile >= ((peak + before) / 2.0)[:, None])
    above_outer = in_run & (profile >= ((peak + after) / 2.0)[:, None])
    inner_edge = np.argmax(above_inner, axis=1)
    outer_edge = samples - 1 - np.argmax(above_outer[:, ::-1], axis=1)
    measured &= above_inner.any(axis=1) & above_outer.any(axis=1) & (outer_edge >= inner_edge)
    length = (outer_edge - inner_edge + 1) * step_mm
    normals = precision @ (direction * distance[np.minimum(start, samples - 1)])  # of the ellipse, where it hits
    cosine = np.abs((normals * direction).sum(axis=0)) / np.maximum(np.linalg.norm(normals, axis=0), 1e-12)
    thickness = (length * cosine)[measured]
    if len(thickness) < RAYS_MIN * RAYS:
        return _NAN
    return float(np.median(thickness))
