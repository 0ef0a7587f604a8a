"""A head built once from the MNI152 2009a template: tissue maps, distance fields and vessels.

The nilearn wheel ships the symmetric 2009a T1, grey- and white-matter probability maps at 1 mm
(RAS, MNI mm). The T1 is skull-stripped, so everything outside the brain is analytic: an
intracranial envelope (the brain closed by a ball, 10 mm above the skull base and 4 mm below it,
plus a thin CSF space) whose signed distance field carries the inner table; a rounder hull whose
distance field carries the outer table and the scalp (the bone between the two is the skull base);
and a tree of contrast-fillable arteries and venous sinuses.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["BRAIN_HU", "HEAD_CENTER_MNI", "Anatomy", "load_anatomy", "template_paths"]

HEAD_CENTER_MNI = (0.0, -18.0, 15.0)  # pivot of rotation, tilt and scaling (mm, RAS)
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_CLOSING_MM = 10.0  # ball that closes sulci and fissures into one intracranial envelope
_BASE_CLOSING_MM = 4.0  # a smaller one below the skull base
_SKULL_BASE_Z_MM = -24.0
_HULL_CLOSING_MM = 30.0  # a much larger ball gives the outer skull surface (skull base filled with bone)
_CSF_RIM_MM = 1.5  # subarachnoid space between the closed brain and the inner table
_MARGIN_MM = 32  # room around the brain for CSF, skull and scalp (coarse grid)
_FINE_MARGIN_MM = 8  # room around the brain for the CSF rim and the inside margin of render.py
_COARSE = 2  # distance fields live on a 2 mm grid (smooth; 8x cheaper to build)
BRAIN_HU = {"gm": 39.0, "wm": 27.0, "csf": 6.0}
_VENTRICLE_BOX = ((-32.0, -50.0, -8.0), (32.0, 35.0, 40.0))  # MNI mm around the lateral ventricles
_VENTRICLE_DEPTH_MM = 12.0  # ... and this far inside the inner table
_VENTRICLE_REACH_MM = 8  # their distance field reaches this far (beyond the largest enlargement, render.FACTORS)

# Arteries as polylines (MNI mm, right hemisphere; mirrored when x != 0) with radius in mm.
_ARTERIES: list[tuple[float, list[tuple[float, float, float]]]] = [
    (1.6, [(0, -25, -50), (0, -22, -38), (0, -18, -26), (0, -16, -19)]),  # basilar
    (2.0, [(14, 0, -28), (14, 1, -20), (13, 2, -15)]),  # internal carotid, supraclinoid
    (1.1, [(13, 2, -15), (8, 10, -12), (2, 14, -10)]),  # A1
    (1.0, [(2, 14, -10), (2, 24, -4), (2, 32, 8), (2, 28, 24), (2, 12, 34),
           (2, -8, 38), (2, -28, 36), (2, -42, 28)]),  # A2 / pericallosal
    (1.4, [(13, 2, -15), (24, 4, -14), (34, 3, -10), (40, 0, -4)]),  # M1
    (1.0, [(40, 0, -4), (44, -10, 6), (48, -24, 16), (50, -40, 26)]),  # M2 posterior
    (0.9, [(40, 0, -4), (46, 10, 4), (50, 16, 18), (52, 20, 32)]),  # M2 anterior
    (0.7, [(13, 2, -15), (11, -6, -16), (8, -14, -18)]),  # posterior communicating
    (1.1, [(0, -16, -19), (8, -15, -18), (16, -24, -12), (22, -40, -4),
           (18, -60, 2), (12, -78, 6), (8, -92, 6)]),  # PCA
    (0.8, [(0, -18, -26), (10, -30, -26), (18, -46, -24), (22, -62, -22)]),  # SCA
]
_VEINS: list[tuple[float, list[tuple[float, float, float]]]] = [
    (2.0, [(0, -44, 6), (0, -70, 4), (0, -96, 0)]),  # vein of Galen to the torcula (straight sinus)
    (3.0, [(0, -96, 0), (20, -98, -4), (38, -88, -12), (48, -70, -24), (44, -50, -36)]),  # transverse
]


@dataclass(frozen=True)
class Anatomy:
    """Volumes indexed [x, y, z] in RAS order: fine ones on a 1 mm grid whose voxel 0 is centred
    at ``origin_mm`` (MNI mm), coarse ones on a ``coarse_mm`` grid centred at ``coarse_origin_mm``.

    base_hu: HU of the grey matter / white matter / CSF mixture (BRAIN_HU), CSF outside the brain.
    gm, wm: tissue fractions 0..1 (the rest of the intracranial space is CSF).
    csf_distance_mm: distance to the nearest CSF (for ventricle and sulcal enlargement).
    ventricle_mm: distance to the lateral ventricles (mm, 0 inside), for their enlargement alone, on a 1 mm grid
        cropped to the ventricles and _VENTRICLE_REACH_MM around them, whose voxel 0 is at ``ventricle_origin_mm``.
    vessel: fraction of each voxel filled by a contrast-fillable vessel.
    envelope_mm (coarse): signed distance to the inner table, positive outside.
    hull_mm (coarse): signed distance to a rounder hull of the envelope, from which the outer table
        and the scalp are measured; between the two lies the bone of the skull base.
    """

    origin_mm: np.ndarray
    base_hu: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf_distance_mm: np.ndarray
    ventricle_mm: np.ndarray
    ventricle_origin_mm: np.ndarray
    vessel: np.ndarray
    coarse_origin_mm: np.ndarray
    coarse_mm: float
    envelope_mm: np.ndarray
    hull_mm: np.ndarray


def template_paths() -> dict[str, Path]:
    """Paths of the MNI152 2009a T1/GM/WM files inside the installed nilearn package.

    Raises FileNotFoundError when nilearn (or a file) is missing; nilearn itself is not imported.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nilearn is not installed; pip install 'ctgen[train]'")
    folder = Path(spec.origin).parent / "datasets" / "data"
    paths = {name: folder / _TEMPLATE.format(name) for name in ("t1", "gm", "wm")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MNI152 template missing from the nilearn wheel")
    return paths


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Read the template once per process and build every volume (a few seconds on one core).

    Raises FileNotFoundError (see template_paths) or ValueError for a template on another grid.
    """
    import nibabel

    volumes, origin = {}, None
    for name, path in template_paths().items():
        image = nibabel.load(path)
        volumes[name] = np.asarray(image.dataobj)
        if not np.allclose(image.affine[:3, :3], np.eye(3)):
            raise ValueError(f"{path}: expected a 1 mm RAS grid, got affine {image.affine.tolist()}")
        origin = image.affine[:3, 3].astype(np.float64)
    gm, wm = (volumes[name].astype(np.float32) * np.float32(1 / 255) for name in ("gm", "wm"))
    brain = (volumes["t1"] > 0) | (gm + wm > 0.3)
    index = np.argwhere(brain)
    brain_lo, brain_hi = index.min(axis=0), index.max(axis=0) + 1

    # Coarse grid: the brain's box plus room for skull and scalp, in blocks of _COARSE voxels.
    lo = brain_lo - _COARSE * int(_MARGIN_MM / _COARSE)
    blocks = -(-(brain_hi + _MARGIN_MM - lo) // _COARSE)
    coarse_brain = _downsample_max(_crop(brain, lo, lo + blocks * _COARSE), _COARSE)
    coarse_origin = origin + lo + (_COARSE - 1) / 2  # centre of coarse voxel 0
    envelope, hull = _skull_surfaces(coarse_brain, coarse_origin)

    # Fine grid: the brain's box plus the CSF rim and the margin that sampling needs.
    lo, hi = brain_lo - _FINE_MARGIN_MM, brain_hi + _FINE_MARGIN_MM
    fine_origin = origin + lo
    gm, wm = _crop(gm, lo, hi), _crop(wm, lo, hi)
    nearest = [np.clip(np.rint((fine_origin[k] + np.arange(gm.shape[k]) - coarse_origin[k]) / _COARSE).astype(int),
                       0, envelope.shape[k] - 1) for k in range(3)]
    intracranial = envelope[np.ix_(*nearest)] < 0
    scale = intracranial / np.maximum(gm + wm, 1.0)  # the maps may add up to a little over 1
    gm *= scale
    wm *= scale
    csf = intracranial & (gm + wm < 0.5)
    csf_distance = ndimage.distance_transform_edt(~csf).astype(np.float32)
    ventricles = _ventricles(csf, fine_origin, envelope, nearest)
    found = np.argwhere(ventricles)
    crop = tuple(slice(max(int(a) - _VENTRICLE_REACH_MM, 0), int(b) + 1 + _VENTRICLE_REACH_MM)
                 for a, b in zip(found.min(axis=0), found.max(axis=0)))
    base_hu = BRAIN_HU["gm"] * gm + BRAIN_HU["wm"] * wm + BRAIN_HU["csf"] * (1.0 - gm - wm)
    return Anatomy(
        origin_mm=fine_origin,
        base_hu=base_hu,
        gm=gm,
        wm=wm,
        csf_distance_mm=csf_distance,
        ventricle_mm=ndimage.distance_transform_edt(~ventricles[crop]).astype(np.float32),
        ventricle_origin_mm=fine_origin + [part.start for part in crop],
        vessel=_vessels(gm.shape, fine_origin, envelope, coarse_origin),
        coarse_origin_mm=coarse_origin,
        coarse_mm=float(_COARSE),
        envelope_mm=envelope,
        hull_mm=hull,
    )


def _ventricles(csf: np.ndarray, origin: np.ndarray, envelope: np.ndarray, nearest) -> np.ndarray:
    """The lateral ventricles on the fine grid: the largest CSF component deep in the box that holds them
    (a foramen of Monro joins the two; sulci and fissures stay near the inner table or outside the box)."""
    lo, hi = np.array(_VENTRICLE_BOX[0]), np.array(_VENTRICLE_BOX[1])
    start = np.clip(np.floor(lo - origin).astype(int), 0, csf.shape)
    stop = np.clip(np.ceil(hi - origin).astype(int) + 1, 0, csf.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    deep = envelope[np.ix_(*(index[a:b] for index, a, b in zip(nearest, start, stop)))] < -_VENTRICLE_DEPTH_MM
    labels, count = ndimage.label(csf[box] & deep)
    ventricles = np.zeros(csf.shape, bool)
    if count:
        ventricles[box] = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ventricles


def _skull_surfaces(brain: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (mm, float32) to the inner table and to the hull, on the coarse grid."""
    # Wide closing above the skull base (fissures, sulci, cisterns), tight below it so that the
    # middle and posterior fossae hug the temporal lobes, brainstem and cerebellum.
    above_base = origin[2] + _COARSE * np.arange(brain.shape[2]) > _SKULL_BASE_Z_MM
    closed = _close(brain, _CLOSING_MM / _COARSE) & above_base | _close(brain, _BASE_CLOSING_MM / _COARSE)
    for k in np.nonzero(above_base)[0]:  # tubes left open from below, e.g. above the sella
        closed[:, :, k] = ndimage.binary_fill_holes(closed[:, :, k])
    inside = ndimage.gaussian_filter(closed.astype(np.float32), 1.0) > 0.5
    envelope = _signed_distance(inside) - _CSF_RIM_MM
    hull = _close(inside, _HULL_CLOSING_MM / _COARSE)
    hull = ndimage.gaussian_filter(hull.astype(np.float32), 1.5) > 0.5
    hull = np.minimum(_signed_distance(hull) - _CSF_RIM_MM, envelope)
    return envelope.astype(np.float32), hull.astype(np.float32)


def _signed_distance(inside: np.ndarray) -> np.ndarray:
    return (ndimage.distance_transform_edt(~inside) - ndimage.distance_transform_edt(inside)) * _COARSE


def _crop(volume: np.ndarray, lo, hi) -> np.ndarray:
    """volume[lo:hi] on each axis; parts beyond the template are zero."""
    out = np.zeros(tuple(np.subtract(hi, lo)), dtype=volume.dtype)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, volume.shape)
    out[tuple(slice(a - l, b - l) for a, b, l in zip(src_lo, src_hi, lo))] = volume[
        tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def _downsample_max(mask: np.ndarray, factor: int) -> np.ndarray:
    shape = tuple(s // factor for s in mask.shape)
    return mask.reshape(shape[0], factor, shape[1], factor, shape[2], factor).any(axis=(1, 3, 5))


def _close(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing by a ball, via distance transforms; holes are filled too."""
    dilated = ndimage.distance_transform_edt(~mask) <= radius
    closed = ndimage.distance_transform_edt(dilated) > radius
    return ndimage.binary_fill_holes(closed | mask)


def _vessels(shape, origin: np.ndarray, envelope: np.ndarray, coarse_origin: np.ndarray) -> np.ndarray:
    """Fraction of each fine voxel inside an artery or venous sinus, float32."""
    vessel = np.zeros(shape, dtype=np.float32)
    tubes = [*_ARTERIES, *_VEINS, (3.0, _superior_sagittal_sinus(envelope, coarse_origin))]
    for radius, points in tubes:
        points = np.asarray(points, dtype=np.float64)
        for mirrored in (False, True):
            if mirrored:
                if np.all(points[:, 0] == 0):
                    break
                points = points * [-1, 1, 1]
            for start, end in zip(points[:-1], points[1:]):
                _draw_segment(vessel, origin, start, end, radius)
    return vessel


def _superior_sagittal_sinus(envelope: np.ndarray, origin: np.ndarray) -> list[tuple[float, float, float]]:
    """Points 3 mm inside the inner table along the midline, from the frontal pole to the torcula."""
    center = np.asarray(HEAD_CENTER_MNI)
    points = []
    for angle in np.radians(np.arange(-35.0, 205.0, 8.0)):
        direction = np.array([0.0, np.cos(angle), np.sin(angle)])
        radii = np.arange(20.0, 130.0, 1.0)
        samples = center + radii[:, None] * direction
        coords = ((samples - origin) / _COARSE).T
        distance = ndimage.map_coordinates(envelope, coords, order=1, mode="nearest")
        outside = np.nonzero(distance > -3.0)[0]
        if outside.size:
            points.append(tuple(samples[outside[0]]))
    return points


def _draw_segment(volume, origin, start, end, radius):
    lo = np.floor(np.minimum(start, end) - radius - 2 - origin).astype(int)
    hi = np.ceil(np.maximum(start, end) + radius + 2 - origin).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, volume.shape)
    if np.any(hi <= lo):
        return
    axes = [origin[k] + np.arange(lo[k], hi[k]) for k in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    direction = end - start
    length2 = float(direction @ direction) or 1.0
    t = np.clip(((x - start[0]) * direction[0] + (y - start[1]) * direction[1] + (z - start[2]) * direction[2])
                / length2, 0.0, 1.0)
    distance = np.sqrt((x - start[0] - t * direction[0]) ** 2 + (y - start[1] - t * direction[1]) ** 2
                       + (z - start[2] - t * direction[2]) ** 2)
    filled = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    np.maximum(volume[region], filled, out=volume[region])
