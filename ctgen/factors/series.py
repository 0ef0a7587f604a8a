"""Factors of a series: each slice's level between the skull base and the vertex, and the head's size.

A slice's level is judged from the series' own head extent along the head-foot axis: 0 at the lowest slice that
holds brain (``ctgen.images.geometry.brain_fraction``), 1 at the highest slice that holds head. Where the series starts
inside the brain or stops short of the vertex the scale is the covered part, and a warning says so. The head's
size is the largest cross-section among the slices that hold brain (cephalometry's maximum length and breadth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ctgen.factors.image import measure_slice
from ctgen.images.geometry import BRAIN_FRACTION_MIN, brain_fraction

__all__ = ["SERIES_SLICES_MIN", "VERTEX_AREA_MAX", "measure_series", "measure_slices", "slice_levels"]

SERIES_SLICES_MIN = 3
VERTEX_AREA_MAX = 0.3  # a top slice whose head cross-section is above this share of the largest is below the vertex
HEAD_AXIS_MIN = 0.5  # |z| of the slice normal: below this the series is not axial enough to have levels


def slice_levels(height_mm: np.ndarray, head_area_mm2: np.ndarray,
                 has_brain: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Levels (0 skull base .. 1 vertex), float64 (N,), of N slices of one series from their height along the
    head-foot axis (mm, superior > 0), head cross-section (mm², NaN where none) and whether each holds brain;
    and warnings (short phrases) where the series does not cover the head. Levels are NaN (with a warning) for
    fewer than SERIES_SLICES_MIN slices, heights that do not differ, or no slice with brain."""
    height = np.asarray(height_mm, dtype=np.float64)
    area = np.nan_to_num(np.asarray(head_area_mm2, dtype=np.float64), nan=0.0)
    brain = np.asarray(has_brain, dtype=bool)
    levels = np.full(len(height), math.nan)
    if len(height) < SERIES_SLICES_MIN or not np.isfinite(height).all():
        return levels, [f"fewer than {SERIES_SLICES_MIN} slices with positions: no levels"]
    if not brain.any():
        return levels, ["no slice holds brain: no levels"]
    base = float(height[brain].min())
    with_head = area > 0
    top = float(height[with_head].max())
    if top - base <= 0:
        return levels, ["the slices with brain do not span any height: no levels"]
    warnings = []
    lowest = int(np.argmin(height))
    if brain[lowest]:
        warnings.append("the series starts inside the brain: level 0 is its lowest slice, not the skull base")
    highest = int(np.argmax(np.where(with_head, height, -np.inf)))
    if area[highest] > VERTEX_AREA_MAX * area.max():
        warnings.append("the series stops below the vertex: level 1 is its highest slice, not the vertex")
    return (height - base) / (top - base), warnings


def measure_series(slices: Sequence) -> tuple[list[dict[str, float]], list[str]]:
    """Every factor of every slice of one series (``ctgen.io.dicom.Slice`` objects, any order): a dict per slice,
    in the given order, with the image factors of ``measure_slice``, ``level`` (see ``slice_levels``), the
    series' largest head cross-section ``head_area_max_mm2``, ``head_width_max_mm``, ``head_length_max_mm``
    (over the slices with brain; NaN without) and ``slice_thickness_mm`` from the header (NaN when absent);
    and the warnings of ``slice_levels``."""
    rows = [measure_slice(one.hu, one.spacing_mm) for one in slices]
    brain = np.array([brain_fraction(one.hu, one.spacing_mm) >= BRAIN_FRACTION_MIN for one in slices], bool)
    height = np.array([_height_mm(one) for one in slices], dtype=np.float64)
    areas = np.array([row["head_area_mm2"] for row in rows], dtype=np.float64)
    levels, warnings = slice_levels(height, areas, brain)
    size = {}
    for name in ("head_area", "head_width", "head_length"):
        unit = "mm2" if name == "head_area" else "mm"
        values = np.array([row[f"{name}_{unit}"] for row in rows], dtype=np.float64)[brain]
        values = values[np.isfinite(values)]
        size[f"{name}_max_{unit}"] = float(values.max()) if values.size else math.nan
    for row, level, one in zip(rows, levels, slices):
        thickness = getattr(one, "slice_thickness_mm", None)
        row.update(level=float(level), **size, slice_thickness_mm=math.nan if thickness is None else float(thickness))
    return rows, warnings


def measure_slices(slices: Sequence) -> tuple[list[dict[str, float]], dict[str, list[str]]]:
    """``measure_series`` over slices of any number of series (``ctgen.io.dicom.Slice`` objects, grouped by
    ``series_uid``; a slice without one is a series of its own): a dict per slice in the given order, and the
    warnings of each series that has any, by series UID."""
    groups: dict[str, list[int]] = {}
    for index, one in enumerate(slices):
        groups.setdefault(one.series_uid or f"\0{index}", []).append(index)
    rows: list[dict[str, float]] = [{} for _ in slices]
    warnings: dict[str, list[str]] = {}
    for uid, members in groups.items():
        measured, said = measure_series([slices[index] for index in members])
        for index, row in zip(members, measured):
            rows[index] = row
        if said and not uid.startswith("\0"):
            warnings[uid] = said
    return rows, warnings


def _height_mm(one) -> float:
    """Position along the slice normal (mm), signed so that it grows towards the head; NaN without geometry or
    for a slice that is not axial."""
    if one.position_mm is None or not one.orientation or len(one.orientation) != 6:
        return math.nan
    normal = np.cross(one.orientation[:3], one.orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6 or abs(normal[2]) / norm < HEAD_AXIS_MIN:
        return math.nan
    normal = normal / norm * math.copysign(1.0, normal[2])
    return float(np.dot(one.position_mm, normal))
