"""Where the head is in a slice, and whether a slice is like those a model was trained on. numpy only.

Real head CT has more in its field of view than the head: the table, the head holder, cushions, cables. The
head mask is the largest connected body component (HU > -500), found on a coarse working grid of about
``WORK_MM`` per pixel, with its holes (sinuses, ear canals) filled; centring uses the body pixels of that
component only, so a table in the field of view does not pull the head off centre. The connected components
come from a labelling of pixel runs (``label``): a few vectorised passes over the runs of each row, well under
a millisecond for a 128² working grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ctgen.defaults import BODY_THRESHOLD_HU, MAX_TILT_DEG

__all__ = ["BODY_THRESHOLD_HU", "BRAIN_FRACTION_MIN", "WORK_MM", "axial_tilt_deg", "brain_fraction", "head_centroid",
           "head_mask", "intracranial_mask", "label", "slice_warnings"]

BONE_HU_MIN = 300.0
BRAIN_HU = (0.0, 80.0)
BRAIN_FRACTION_MIN = 0.1  # below this share of brain-range tissue inside the skull, a slice holds no brain
WORK_MM = 2.0  # working grid pitch of the head mask: coarse enough to be cheap, fine enough to split a table off
FIELD_OF_VIEW_MIN = 0.6  # a field of view under this share of the model's misses part of the head
SPACING_MAX = 2.0  # pixels this many times coarser than the model's grid carry less detail than it learnt


# ------------------------------------------------------------------------------------------ labelling
def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True in a bool (H, W) mask, row by row: rows, starts, ends (exclusive), int64, row-major."""
    width = mask.shape[1] + 1
    padded = np.zeros((mask.shape[0], width), np.int8)  # a False column after each row separates the rows
    padded[:, :-1] = mask
    steps = np.diff(padded.ravel(), prepend=np.int8(0))
    starts, ends = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)
    rows = starts // width
    return rows, starts - rows * width, ends - rows * width


def _run_components(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int,
                    connectivity: int) -> np.ndarray:
    """The component root (a run index) of every run; runs of adjacent rows touch by ``connectivity`` 4 or 8."""
    count = len(rows)
    parent = np.arange(count)
    if count < 2:
        return parent
    reach = 1 if connectivity == 8 else 0
    stride = width + 4
    key_starts, key_ends = rows * stride + starts, rows * stride + ends
    above = (rows - 1) * stride
    # runs a of the row above that touch run b: ends[a] > starts[b] - reach and starts[a] < ends[b] + reach
    first = np.searchsorted(key_ends, above + starts - reach, side="right")
    last = np.searchsorted(key_starts, above + ends + reach, side="left") - 1
    first = np.maximum(first, np.searchsorted(key_starts, above, side="left"))  # stay in the row above
    touching = np.maximum(last - first + 1, 0)
    if not touching.any():
        return parent
    b = np.repeat(np.arange(count), touching)
    a = np.repeat(first, touching) + (np.arange(touching.sum()) - np.repeat(np.cumsum(touching) - touching, touching))
    while True:  # hook every edge's larger root onto the smaller, then compress paths, until nothing changes
        root_a, root_b = parent[a], parent[b]
        low, high = np.minimum(root_a, root_b), np.maximum(root_a, root_b)
        differ = low != high
        if not differ.any():
            return parent
        np.minimum.at(parent, high[differ], low[differ])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def label(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a bool (H, W) mask: int32 labels (H, W), 0 for background and 1..n for the
    components in order of their first pixel (row-major), and n. ``connectivity``: 8 or 4."""
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends = _runs(mask)
    labels = np.zeros(mask.shape, np.int32)
    if len(rows) == 0:
        return labels, 0
    roots = _run_components(rows, starts, ends, mask.shape[1], connectivity)
    unique, numbers = np.unique(roots, return_inverse=True)
    _paint(labels, rows, starts, ends, numbers.astype(np.int32) + 1)
    return labels, len(unique)


def _paint(image: np.ndarray, rows, starts, ends, values) -> None:
    """Overwrite ``image`` with ``value`` on every run [row, start:end] and 0 elsewhere (a cumulative sum along
    each row: no Python loop; runs never share a start or end, so plain assignment places the steps)."""
    steps = np.zeros((image.shape[0], image.shape[1] + 1), np.int64)
    steps[rows, starts] = values
    steps[rows, ends] = -values
    image[...] = np.cumsum(steps, axis=1)[:, :-1]


def _largest_with_holes_filled(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask, its 4-connected background holes filled."""
    largest = _largest(mask)
    return np.zeros_like(mask) if largest is None else _fill_holes(largest)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """A bool mask with every background region that does not reach the border filled in."""
    rows, starts, ends = _runs(~mask)
    if len(rows) == 0:
        return mask.copy()
    roots = _run_components(rows, starts, ends, mask.shape[1], 4)
    border = (rows == 0) | (rows == mask.shape[0] - 1) | (starts == 0) | (ends == mask.shape[1])
    outside = np.isin(roots, roots[border])
    reached = np.zeros(mask.shape, np.int64)
    _paint(reached, rows[outside], starts[outside], ends[outside], np.ones(int(outside.sum()), np.int64))
    return reached == 0


# ------------------------------------------------------------------------------------------ the head
def _block(spacing_mm: tuple[float, float] | None, shape: tuple[int, int]) -> int:
    """Pixels per working-grid cell along each axis: the power of two (1, 2, 4 or 8) nearest to WORK_MM."""
    if spacing_mm is None:
        ratio = max(shape) / 128
    else:
        ratio = WORK_MM / min(spacing_mm)
    k = 1 << max(0, min(3, round(math.log2(max(ratio, 1.0)))))
    while k > 1 and min(shape) < 16 * k:
        k //= 2
    return k


def _padded(mask: np.ndarray, k: int) -> np.ndarray:
    """uint8 view or copy of a bool mask padded with False to multiples of k."""
    rows, cols = -(-mask.shape[0] // k) * k, -(-mask.shape[1] // k) * k
    if mask.shape == (rows, cols):
        return mask.view(np.uint8)
    padded = np.zeros((rows, cols), np.uint8)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded


_BYTE_SUMS = {2: (np.uint16, 0x0101, 8), 4: (np.uint32, 0x01010101, 24), 8: (np.uint64, 0x0101010101010101, 56)}


def _sum_every(array: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of k consecutive entries along ``axis`` (its length a multiple of k) of a C-contiguous uint8 array
    whose entries are small enough for the sums to fit a byte; uint8. Along rows: k strided adds; along
    columns: the k bytes of each group read as one integer and summed by one multiplication (a byte-sum
    trick for k = 2, 4, 8), far faster than numpy's reduction over a short reshaped axis."""
    if k == 1:
        return array
    if axis == 0:
        total = array[0::k].copy()
        for i in range(1, k):
            total += array[i::k]
        return total
    kind, spread, shift = _BYTE_SUMS[k]
    words = np.ascontiguousarray(array).view(kind)
    return ((words * kind(spread)) >> kind(shift)).astype(np.uint8)


def _blocks(mask: np.ndarray, k: int) -> np.ndarray:
    """bool (H, W) -> counts of True per k x k cell, (ceil(H/k), ceil(W/k)); the edges padded with False."""
    return _sum_every(_sum_every(_padded(mask, k), k, 0), k, 1)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 dilation of a bool mask."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    wide = out.copy()
    out[:, 1:] |= wide[:, :-1]
    out[:, :-1] |= wide[:, 1:]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _head_cells(body: np.ndarray, k: int) -> np.ndarray:
    """bool cells of the head, holes filled, on the working grid of k x k pixel cells."""
    counts = _blocks(body, k)
    cells = counts * 2 > k * k  # majority: a thin table line or cable vanishes here
    eroded = _erode(cells)  # and bridges of a cell or two (cushions, straps) break
    core = _largest_with_holes_filled(eroded if eroded.any() else cells)
    return (_dilate(core) & (cells | core)) if eroded.any() else core


def head_mask(hu: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
    """The head in an HU slice float (H, W): bool (H, W), the body pixels (HU > -500) of the largest connected
    component and the holes inside it, without the table, head holder or anything else apart from the head.
    ``spacing_mm`` (row, column) sets the working grid (about 2 mm); without it, about 128 cells across."""
    hu = np.asarray(hu, dtype=np.float32)
    body = hu > np.float32(BODY_THRESHOLD_HU)
    k = _block(spacing_mm, hu.shape)
    cells = _head_cells(body, k)
    near = np.repeat(np.repeat(_dilate(cells), k, axis=0), k, axis=1)[: hu.shape[0], : hu.shape[1]]
    inside = np.repeat(np.repeat(_erode(cells), k, axis=0), k, axis=1)[: hu.shape[0], : hu.shape[1]]
    return (body & near) | inside


def head_centroid(hu: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """(row, col) in pixel indices: the centroid of the body pixels (HU > -500) that belong to the head;
    None when the slice holds no body at all.

    The head's cells are the largest component of the working grid (after an erosion that breaks thin bridges),
    taken row by row from its first to its last cell and widened by two cells every way; a table, head holder or
    other object farther than that from the head does not move the centroid. On a slice of the head alone it is
    the centroid of all body pixels, exactly.
    """
    hu = np.asarray(hu, dtype=np.float32)
    body = hu > np.float32(BODY_THRESHOLD_HU)
    k = _block(spacing_mm, hu.shape)
    pixels = _padded(body, k)
    band_rows = _sum_every(pixels, k, 0)  # (cells down, W): body pixels per cell row and pixel column
    counts = _sum_every(band_rows, k, 1)
    cells = counts * 2 > k * k  # majority: a thin table line or cable vanishes here
    eroded = _erode(cells)  # and bridges of a cell or two (cushions, straps) break
    spans = _row_spans(eroded if eroded.any() else cells, widen=2)
    if spans is None:
        return None
    first, last = spans
    index = np.arange(cells.shape[1])
    selected = (index >= first[:, None]) & (index <= last[:, None])
    if (counts[~selected] > 0).any():  # something apart from the head: its cells weigh nothing
        per_row = (_sum_every(pixels, k, 1) * np.repeat(selected, k, axis=0)).sum(axis=1, dtype=np.int64)
        band_rows = band_rows * np.repeat(selected, k, axis=1)
    else:
        per_row = pixels.sum(axis=1, dtype=np.int32)  # body pixels in each pixel row
    per_col = band_rows.sum(axis=0, dtype=np.int64)
    total = int(per_row.sum())
    return float(per_row @ np.arange(len(per_row)) / total), float(per_col @ np.arange(len(per_col)) / total)


def _row_spans(mask: np.ndarray, widen: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, last) column of the largest 8-connected component of a bool mask in each row, both widened by
    ``widen`` cells along and across the rows (rows without it: first > last); None when the mask is empty."""
    rows, starts, ends = _runs(mask)
    if len(rows) == 0:
        return None
    roots = _run_components(rows, starts, ends, mask.shape[1], 8)
    keep = roots == int(np.argmax(np.bincount(roots, weights=ends - starts)))
    first = np.full(mask.shape[0], mask.shape[1] + widen, np.int64)
    last = np.full(mask.shape[0], -1 - widen, np.int64)
    np.minimum.at(first, rows[keep], starts[keep])
    np.maximum.at(last, rows[keep], ends[keep] - 1)
    low, high = first.copy(), last.copy()
    for shift in range(1, widen + 1):  # the rows above and below reach as far as their neighbours
        np.minimum(low[shift:], first[:-shift], out=low[shift:])
        np.minimum(low[:-shift], first[shift:], out=low[:-shift])
        np.maximum(high[shift:], last[:-shift], out=high[shift:])
        np.maximum(high[:-shift], last[shift:], out=high[:-shift])
    return low - widen, high + widen


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected component of a bool mask (None when the mask is empty)."""
    rows, starts, ends = _runs(mask)
    if len(rows) == 0:
        return None
    roots = _run_components(rows, starts, ends, mask.shape[1], 8)
    sizes = np.bincount(roots, weights=ends - starts, minlength=len(rows))
    keep = roots == int(np.argmax(sizes))
    component = np.zeros(mask.shape, np.int64)
    _paint(component, rows[keep], starts[keep], ends[keep], np.ones(int(keep.sum()), np.int64))
    return component.astype(bool)


def brain_fraction(hu: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> float:
    """Share of the head (HU > -500) that is brain-range tissue (0..80 HU) enclosed by bone (HU >= 300, its
    holes filled, on the working grid); HU float (H, W) -> [0, 1]. Slices below the skull base (an open bone
    ring), above the vertex or without a head score near 0; slices through the brain well above
    BRAIN_FRACTION_MIN."""
    hu = np.asarray(hu, dtype=np.float32)
    head_pixels = int(np.count_nonzero(hu > np.float32(BODY_THRESHOLD_HU)))
    if head_pixels == 0:
        return 0.0
    k = _block(spacing_mm, hu.shape)
    inside = _enclosed_cells(hu, k)
    if not inside.any():
        return 0.0
    brain = _blocks((hu >= np.float32(BRAIN_HU[0])) & (hu <= np.float32(BRAIN_HU[1])), k)
    return float(brain[inside].sum()) / head_pixels


def _enclosed_cells(hu: np.ndarray, k: int) -> np.ndarray:
    """bool cells of the working grid enclosed by bone and holding none."""
    bone = _blocks(hu >= np.float32(BONE_HU_MIN), k) > 0  # any bone in a cell: a thin skull stays a closed ring
    return _fill_holes(bone) & ~bone


def intracranial_mask(hu: np.ndarray, spacing_mm: tuple[float, float] | None = None,
                      margin_mm: float = 0.0) -> np.ndarray:
    """The cranial cavity of an HU slice float (H, W): bool (H, W), the largest region enclosed by bone
    (HU >= 300), found on the working grid as ``brain_fraction`` finds it (so within a cell of the inner table),
    then shrunk by ``margin_mm`` (in pixels without ``spacing_mm``). All False below the skull base (an open
    bone ring), above the vertex or without a head."""
    hu = np.asarray(hu, dtype=np.float32)
    k = _block(spacing_mm, hu.shape)
    cavity = _largest(_enclosed_cells(hu, k))
    if cavity is None:
        return np.zeros(hu.shape, bool)
    mask = np.repeat(np.repeat(cavity, k, axis=0), k, axis=1)[: hu.shape[0], : hu.shape[1]]
    steps = margin_mm / min(spacing_mm) if spacing_mm is not None else margin_mm
    for _ in range(int(round(steps))):
        mask = _erode(mask)
    return mask


# ------------------------------------------------------------------------------------------ model fit
def slice_warnings(hu: np.ndarray, spacing_mm: tuple[float, float] | None, grid_size: int, grid_spacing_mm: float,
                   orientation: Sequence[float] | None = None) -> list[str]:
    """What makes an HU slice (H, W) unlike a model's training slices, as short phrases ([] when nothing):
    a field of view under 60 % of the model's (``grid_size`` x ``grid_spacing_mm``), pixels more than twice as
    coarse as the model's, no brain (``brain_fraction`` under BRAIN_FRACTION_MIN), or a slice normal more than
    MAX_TILT_DEG from the head-foot axis (``orientation``: DICOM's 6 direction cosines)."""
    hu = np.asarray(hu)
    found = []
    model_fov = grid_size * grid_spacing_mm
    if spacing_mm is not None:
        fov = max(hu.shape[0] * spacing_mm[0], hu.shape[1] * spacing_mm[1])
        if fov < FIELD_OF_VIEW_MIN * model_fov:
            found.append(f"field of view {fov:.0f} mm, the model's is {model_fov:.0f} mm")
        if max(spacing_mm) > SPACING_MAX * grid_spacing_mm:
            found.append(f"pixel spacing {max(spacing_mm):.2f} mm, the model's is {grid_spacing_mm:.2f} mm")
    fraction = brain_fraction(hu, spacing_mm)
    if fraction < BRAIN_FRACTION_MIN:
        found.append(f"no brain in the slice (brain fraction {fraction:.2f})")
    if orientation is not None and len(orientation) == 6:
        tilt = axial_tilt_deg(orientation)  # NaN for a degenerate orientation: no warning
        if tilt > MAX_TILT_DEG:
            found.append(f"not axial (slice normal {tilt:.0f}° from the head-foot axis)")
    return found


def axial_tilt_deg(orientation: Sequence[float]) -> float:
    """Angle in degrees between the slice normal of ImageOrientationPatient (6 direction cosines) and the
    head-foot axis: 0 for axial, 90 for coronal or sagittal slices."""
    row, col = orientation[:3], orientation[3:6]
    normal = (row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0])
    norm = math.sqrt(sum(v * v for v in normal))
    if norm < 1e-6:
        return float("nan")
    return math.degrees(math.acos(min(1.0, abs(normal[2]) / norm)))

