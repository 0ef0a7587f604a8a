"""Factors of variation and the rendering of one axial CT slice from the template head.

A slice is an axial plane of the scanner: 512 x 512 pixels of 0.45 mm (230.4 mm field of view,
centred on the isocentre), x to the patient's left along the columns, y to the back along the rows
(radiological display). The plane is mapped into the template through the head pose (shift,
in-plane rotation, pitch, scale); the template volumes are sampled with
``scipy.ndimage.map_coordinates`` (order 1) on a 256 x 256 grid of 0.9 mm, inside the skull only,
and upsampled; skull and scalp follow analytic profiles of two distance fields at full resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from train.phantom.anatomy import BRAIN_HU, HEAD_CENTER_MNI, Anatomy, load_anatomy

__all__ = [
    "FACTORS",
    "HU",
    "LEVEL_RANGE_MNI",
    "MATRIX",
    "PIXEL_MM",
    "Factor",
    "level_to_z_mm",
    "render_slice",
    "render_tissues",
    "sample_patient",
    "slice_levels",
]

MATRIX = 512
PIXEL_MM = 0.45
LEVEL_RANGE_MNI = (-35.0, 76.0)  # z_MNI (mm) of level 0 (pons, 4th ventricle) and level 1 (vertex)
_COARSE = 2  # template sampled every _COARSE pixels
# Cavities in the bone of the skull base: (centre, radii) in MNI mm, and what fills them.
_CAVITIES = {
    "sphenoid_sinus": ((0.0, 13.0, -36.0), (12.0, 10.0, 7.0)),
    "pituitary": ((0.0, -2.0, -28.0), (7.0, 5.0, 4.5)),
}
HU = {
    **BRAIN_HU, "inner_table": 1600.0, "diploe": 450.0, "base_bone": 1100.0, "outer_table": 1750.0,
    "galea": 45.0, "muscle": 52.0, "subcutaneous": 15.0, "skin": 55.0, "air": -1000.0,
    "sphenoid_sinus": -1000.0, "pituitary": 45.0, "falx": 45.0,
}
_HU_MIN, _HU_MAX = -1024.0, 3071.0
_INSIDE_MARGIN_MM = 2.5  # brain maps are sampled where the envelope distance is below this


@dataclass(frozen=True)
class Factor:
    """One factor of variation: sampled per "patient" or per "slice" from ``distribution``."""

    name: str
    low: float
    high: float
    distribution: str
    per: str
    unit: str
    description: str


FACTORS: tuple[Factor, ...] = (
    Factor("level", 0.0, 1.0, "from level_start ~ U(0, 0.06) to level_end ~ U(0.94, 1): evenly spaced, or "
           "U(level_start, level_end) sorted", "slice", "",
           f"axial slice position: 0 = z_MNI {LEVEL_RANGE_MNI[0]:g} mm (pons, 4th ventricle, sphenoid sinus), "
           f"1 = z_MNI {LEVEL_RANGE_MNI[1]:g} mm (vertex), scaled with the head; pitch tilts the head, not the "
           "plane (z_mm in factors.csv is ImagePositionPatient z)"),
    Factor("scale_x", 0.86, 1.04, "uniform", "patient", "", "head width relative to MNI152 (left-right)"),
    Factor("scale_y", 0.86, 1.04, "uniform", "patient", "",
           "head length relative to MNI152 (front-back); height scales by sqrt(scale_x * scale_y)"),
    Factor("rotation_deg", -15.0, 15.0, "uniform", "patient", "deg",
           "in-plane rotation, counter-clockwise on the displayed image"),
    Factor("pitch_deg", -12.0, 12.0, "uniform", "patient", "deg", "head tilt about the left-right axis, chin down > 0"),
    Factor("shift_x_mm", -10.0, 10.0, "uniform", "patient", "mm", "head position in the field of view, to the left"),
    Factor("shift_y_mm", -8.0, 8.0, "uniform", "patient", "mm", "head position in the field of view, to the back"),
    Factor("atrophy_mm", 0.0, 2.5, "uniform", "patient", "mm",
           "ventricle and sulcal enlargement: CSF dilated into grey and white matter by this distance"),
    Factor("skull_mm", 4.5, 9.0, "uniform", "patient", "mm",
           "skull thickness (inner table + diploe + outer table); temporal squama 45% thinner"),
    Factor("contrast", 0.0, 1.0, "Bernoulli(0.5)", "patient", "", "contrast medium given (1) or not (0)"),
    Factor("contrast_hu", 0.0, 400.0, "0 without contrast, else U(150, 400)", "patient", "HU",
           "attenuation of blood in the arteries and venous sinuses"),
    Factor("noise_hu", 1.5, 8.0, "uniform", "patient", "HU", "standard deviation of image noise (slightly correlated)"),
    Factor("blur_mm", 0.3, 1.2, "uniform", "patient", "mm", "Gaussian sigma of the reconstruction kernel"),
    # drawn after every factor above, so that a seed gives the patients it gave before these existed
    Factor("ventricle_mm", 0.0, 4.0, "uniform, drawn last", "patient", "mm",
           "lateral ventricles enlarged by this distance (on top of atrophy_mm)"),
    Factor("warp_mm", 1.0, 3.0, "uniform, drawn last", "patient", "mm",
           "RMS displacement of a smooth random deformation of the brain inside the skull (wavelengths 80-160 "
           "mm, fading out over 10 mm towards the inner table), the patient's own (warp_seed): no two brains alike"),
)
_SEPTUM_MM = 10.0  # more than the largest ventricle_mm: the septum pellucidum between the ventricles stays
_WARP_MODES = 4
_WARP_WAVELENGTH_MM = (80.0, 160.0)
_WARP_TAPER_MM = 10.0  # the deformation fades out over this distance to the inner table


def sample_patient(rng: np.random.Generator) -> dict[str, float]:
    """Draw every per-patient factor, plus ``level_start``, ``level_end`` and ``warp_seed`` (an int: the
    deformation's own stream), from ``rng``."""
    values: dict[str, float] = {}
    for factor in FACTORS:
        if factor.per == "patient" and factor.distribution == "uniform":
            values[factor.name] = float(rng.uniform(factor.low, factor.high))
    contrast = bool(rng.random() < 0.5)
    strength = float(rng.uniform(150.0, 400.0))
    values["contrast"] = float(contrast)
    values["contrast_hu"] = strength if contrast else 0.0
    values["level_start"] = float(rng.uniform(0.0, 0.06))
    values["level_end"] = float(rng.uniform(0.94, 1.0))
    for factor in FACTORS:
        if factor.distribution == "uniform, drawn last":
            values[factor.name] = float(rng.uniform(factor.low, factor.high))
    values["warp_seed"] = int(rng.integers(2**31))
    return values


def slice_levels(patient: Mapping[str, float], slices: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Levels (0..1), float64 (slices,), lowest first, from the patient's level_start to level_end.

    Evenly spaced (one slice: the middle); with ``rng``, drawn uniformly from ``rng`` and sorted.
    """
    if rng is not None:
        return np.sort(rng.uniform(patient["level_start"], patient["level_end"], slices))
    if slices == 1:
        return np.array([(patient["level_start"] + patient["level_end"]) / 2])
    return np.linspace(patient["level_start"], patient["level_end"], slices)


def level_to_z_mm(factors: Mapping[str, float]) -> float:
    """Scanner z (mm, superior > 0) of the slice at ``factors['level']``: ImagePositionPatient[2]."""
    lo, hi = LEVEL_RANGE_MNI
    return float((lo + factors["level"] * (hi - lo) - HEAD_CENTER_MNI[2]) * _scale_z(factors))


def render_slice(factors: Mapping[str, float], rng: np.random.Generator | None = None) -> np.ndarray:
    """Render one slice: HU, float32 (512, 512), clipped to [-1024, 3071].

    ``factors`` holds every name in FACTORS (``level`` included) and ``warp_seed``. Noise of ``noise_hu`` is
    drawn from ``rng``; with ``rng=None`` the slice is noise-free (the blur still applies).
    """
    planes = _sample_planes(factors, load_anatomy(), tissues=False)
    fractions = _fractions(planes, factors)
    hu = planes["brain_hu"] * fractions.pop("intracranial")
    for name, fraction in fractions.items():
        hu += np.float32(HU[name]) * fraction
    sigma_px = factors["blur_mm"] / PIXEL_MM
    if sigma_px > 0:
        hu = ndimage.gaussian_filter(hu, sigma_px, mode="nearest", truncate=3.0)
    if rng is not None and factors["noise_hu"] > 0:
        hu += _correlated_noise(rng, factors["noise_hu"])
    return np.clip(hu, _HU_MIN, _HU_MAX, out=hu)


def render_tissues(factors: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Tissue fractions of a slice, each float32 (512, 512) in [0, 1], before blur and noise.

    Keys: gm, wm, csf (falx included), vessel (arteries and sinuses, whether or not they carry
    contrast), bone (tables, diploe, skull base), soft (scalp and pituitary) and air (sphenoid
    sinus included). They sum to 1 in every pixel.
    """
    planes = _sample_planes(factors, load_anatomy(), tissues=True)
    fractions = _fractions(planes, factors)
    inside = fractions.pop("intracranial")
    out = {name: planes[name] * inside for name in ("gm", "wm", "csf", "vessel")}
    out["bone"] = sum(fractions[name] for name in ("inner_table", "diploe", "base_bone", "outer_table"))
    out["soft"] = sum(fractions[name] for name in ("galea", "muscle", "subcutaneous", "skin", "pituitary"))
    out["air"] = fractions["air"] + fractions["sphenoid_sinus"]
    return {name: np.asarray(value, dtype=np.float32) for name, value in out.items()}


def _scale_z(factors: Mapping[str, float]) -> float:
    return float(np.sqrt(factors["scale_x"] * factors["scale_y"]))


def _template_coords(factors: Mapping[str, float], matrix: int, pixel_mm: float) -> np.ndarray:
    """MNI coordinates (mm) of the pixel centres of a matrix x matrix plane: float64 (3, matrix, matrix)."""
    axis = (np.arange(matrix) + 0.5) * pixel_mm - matrix * pixel_mm / 2
    x_screen = axis[None, :] - factors["shift_x_mm"]  # columns: to the patient's left
    y_screen = axis[:, None] - factors["shift_y_mm"]  # rows: to the back
    theta = np.radians(factors["rotation_deg"])
    x_head = np.cos(theta) * x_screen - np.sin(theta) * y_screen
    y_head = np.sin(theta) * x_screen + np.cos(theta) * y_screen
    right, anterior = -x_head, -y_head
    z_scan = level_to_z_mm(factors)
    phi = np.radians(factors["pitch_deg"])
    coords = np.empty((3, matrix, matrix))
    coords[0] = right / factors["scale_x"] + HEAD_CENTER_MNI[0]
    coords[1] = (np.cos(phi) * anterior - np.sin(phi) * z_scan) / factors["scale_y"] + HEAD_CENTER_MNI[1]
    coords[2] = (np.sin(phi) * anterior + np.cos(phi) * z_scan) / _scale_z(factors) + HEAD_CENTER_MNI[2]
    return coords


def _sample_planes(factors: Mapping[str, float], anatomy: Anatomy, *, tissues: bool) -> dict[str, np.ndarray]:
    """Every smooth map of the slice, upsampled to float32 (512, 512).

    Always: envelope_mm, hull_mm, temporal (weight of the temporal fossa), the cavities and
    brain_hu (HU inside the skull with atrophy, vessels and falx applied). With ``tissues``
    also the fractions gm, wm, csf and vessel.
    """
    n = MATRIX // _COARSE
    mni = _template_coords(factors, n, PIXEL_MM * _COARSE)
    coarse = (mni - anatomy.coarse_origin_mm[:, None, None]) / anatomy.coarse_mm
    planes = {
        "envelope_mm": ndimage.map_coordinates(anatomy.envelope_mm, coarse, order=1, cval=100.0),
        "hull_mm": ndimage.map_coordinates(anatomy.hull_mm, coarse, order=1, cval=100.0),
        "temporal": _temporal_weight(mni),
    }
    for name, (center, radii) in _CAVITIES.items():
        planes[name] = _ellipsoid(mni, center, radii)

    inside = planes["envelope_mm"] < _INSIDE_MARGIN_MM
    brain_mni = mni[:, inside]  # (3, M): only the intracranial pixels touch the 1 mm volumes
    if factors["warp_mm"] > 0:  # the brain moves inside a skull that keeps its shape
        taper = np.clip(-planes["envelope_mm"][inside] / _WARP_TAPER_MM, 0.0, 1.0)
        brain_mni = brain_mni + taper * _warp_mm(brain_mni, factors["warp_mm"], int(factors["warp_seed"]))
    points = brain_mni - anatomy.origin_mm[:, None]  # voxel index on the 1 mm grid

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, points, order=1, cval=0.0)

    csf_distance = sample(anatomy.csf_distance_mm)
    eroded = np.clip(np.maximum(factors["atrophy_mm"] - csf_distance,
                                _ventricle_growth(brain_mni, anatomy, factors["ventricle_mm"])) + 0.5, 0.0, 1.0)
    falx = _falx(brain_mni, csf_distance)
    contrast = factors["contrast_hu"] > 0
    vessel = sample(anatomy.vessel) if contrast or tissues else None
    brain_hu = sample(anatomy.base_hu)
    brain_hu += eroded * (BRAIN_HU["csf"] - brain_hu) + falx * (HU["falx"] - BRAIN_HU["csf"])
    if contrast:
        brain_hu += vessel * (factors["contrast_hu"] - brain_hu)
    channels = {"brain_hu": brain_hu}
    if tissues:
        keep = (1.0 - eroded) * (1.0 - vessel)
        gm, wm = sample(anatomy.gm) * keep, sample(anatomy.wm) * keep
        channels.update(gm=gm, wm=wm, csf=1.0 - vessel - gm - wm, vessel=vessel)
    for name, values in channels.items():
        plane = np.full((n, n), HU["csf"] if name == "brain_hu" else 0.0, dtype=np.float32)
        plane[inside] = values
        planes[name] = plane
    return dict(zip(planes, _upsample(np.stack(list(planes.values())))))


def _ventricle_growth(mni: np.ndarray, anatomy: Anatomy, ventricle_mm: float) -> np.ndarray:
    """``ventricle_mm`` minus the distance to the ventricles at points float64 (3, M); -inf beyond the field's
    reach (only the points near the ventricles are sampled)."""
    index = mni - anatomy.ventricle_origin_mm[:, None]
    near = np.all((index >= 0) & (index <= np.array(anatomy.ventricle_mm.shape)[:, None] - 1), axis=0)
    growth = np.full(mni.shape[1], -np.inf, dtype=np.float32)
    if near.any():
        growth[near] = ventricle_mm - ndimage.map_coordinates(anatomy.ventricle_mm, index[:, near], order=1)
        growth[near] -= _SEPTUM_MM * np.clip(1.5 - np.abs(mni[0, near]), 0.0, 1.0)  # the septum stays (2 mm)
    return growth


def _warp_mm(mni: np.ndarray, rms_mm: float, seed: int) -> np.ndarray:
    """A smooth displacement (MNI mm) at points float64 (3, ...): _WARP_MODES plane waves of random direction,
    wavelength, phase and displacement, scaled to an RMS of ``rms_mm`` over space; the same ``seed``, the same
    field."""
    rng = np.random.default_rng(seed)
    waves = rng.standard_normal((_WARP_MODES, 3))
    waves *= (2 * np.pi / rng.uniform(*_WARP_WAVELENGTH_MM, _WARP_MODES) / np.linalg.norm(waves, axis=1))[:, None]
    phases = rng.uniform(0.0, 2 * np.pi, _WARP_MODES)
    displacements = rng.standard_normal((_WARP_MODES, 3))
    displacements *= rms_mm / np.sqrt(0.5 * (displacements**2).sum())  # a sine's mean square is 1/2
    out = np.zeros_like(mni)
    for wave, phase, displacement in zip(waves, phases, displacements):
        sine = np.sin(np.tensordot(wave, mni, axes=1) + phase)
        out += displacement.reshape((3,) + (1,) * (mni.ndim - 1)) * sine
    return out


def _falx(mni: np.ndarray, csf_distance: np.ndarray) -> np.ndarray:
    """Fraction of falx: a 2 mm sheet in the midline CSF above the corpus callosum (and septum)."""
    sheet = np.clip(1.5 - np.abs(mni[0]), 0.0, 1.0) * (mni[2] > 12.0)
    return sheet * np.clip(1.0 - csf_distance, 0.0, 1.0)


def _temporal_weight(mni: np.ndarray) -> np.ndarray:
    """1 over the temporal fossae (thin squama, thick temporalis muscle), 0 elsewhere."""
    x = mni[0]
    y = mni[1] - HEAD_CENTER_MNI[1] + 8.0
    cos2 = x * x / np.maximum(x * x + y * y, 1e-6)
    height = np.clip((40.0 - mni[2]) / 30.0, 0.0, 1.0)
    return cos2**3 * height


def _ellipsoid(mni: np.ndarray, center, radii) -> np.ndarray:
    """Fraction of each pixel inside an ellipsoid (a ramp about 1 mm wide at its surface)."""
    radius = np.sqrt(sum(((mni[k] - c) / r) ** 2 for k, (c, r) in enumerate(zip(center, radii))))
    return np.clip((1.0 - radius) * min(radii) + 0.5, 0.0, 1.0)


def _fractions(planes: dict[str, np.ndarray], factors: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Intracranial space, skull and scalp layers, float32 (512, 512) each, summing to 1.

    The inner table and diploe are measured from the inner table (envelope), the outer table and
    scalp from the hull; where the hull lies far outside the envelope (skull base) the space between
    is bone. Coverage (the part of a pixel below an edge, linear across its width) accumulates
    monotonically, so each layer is the difference of two coverages.
    """
    inner, hull, temporal = planes["envelope_mm"], planes["hull_mm"], planes["temporal"]
    skull = np.float32(factors["skull_mm"]) * (1.0 - 0.45 * temporal)
    muscle = 1.0 + 9.0 * temporal

    def covered(edge, distance):
        return np.clip((edge - distance) * np.float32(1.0 / PIXEL_MM) + 0.5, 0.0, 1.0)

    steps = [
        ("intracranial", covered(0.0, inner)),
        ("inner_table", covered(0.3 * skull, inner)),
        ("diploe", np.minimum(covered(0.65 * skull, hull), covered(skull, inner))),
        ("base_bone", covered(0.65 * skull, hull)),
        ("outer_table", covered(skull, hull)),
        ("galea", covered(skull + 0.8, hull)),
        ("muscle", covered(skull + 0.8 + muscle, hull)),
        ("subcutaneous", covered(skull + 3.0 + muscle, hull)),
        ("skin", covered(skull + 4.5 + muscle, hull)),
    ]
    fractions, below = {}, np.zeros_like(inner)
    for name, coverage in steps:
        coverage = np.maximum(coverage, below)
        fractions[name] = coverage - below
        below = coverage
    fractions["air"] = 1.0 - below
    for cavity in _CAVITIES:
        fractions[cavity] = np.zeros_like(inner)
        filled = planes[cavity]
        if filled.any():
            for name in ("diploe", "base_bone"):
                carved = fractions[name] * filled
                fractions[name] -= carved
                fractions[cavity] += carved
    return fractions


def _upsample(planes: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling of (C, n, n) pixel-centred planes to float32 (C, 2n, 2n), edges held."""
    planes = planes.astype(np.float32, copy=False)
    rows = _upsample_axis(planes, 1)
    return _upsample_axis(rows, 2)


def _upsample_axis(values: np.ndarray, axis: int) -> np.ndarray:
    # Output pixel 2k sits at input coordinate k - 1/4, pixel 2k + 1 at k + 1/4.
    before = np.concatenate([np.take(values, [0], axis), np.take(values, range(values.shape[axis] - 1), axis)], axis)
    after = np.concatenate([np.take(values, range(1, values.shape[axis]), axis), np.take(values, [-1], axis)], axis)
    shape = list(values.shape)
    shape[axis] *= 2
    out = np.empty(shape, dtype=np.float32)
    even = [slice(None)] * values.ndim
    odd = [slice(None)] * values.ndim
    even[axis], odd[axis] = slice(0, None, 2), slice(1, None, 2)
    out[tuple(even)] = 0.75 * values + 0.25 * before
    out[tuple(odd)] = 0.75 * values + 0.25 * after
    return out


def _correlated_noise(rng: np.random.Generator, sigma_hu: float) -> np.ndarray:
    white = rng.standard_normal((MATRIX, MATRIX), dtype=np.float32)
    texture = ndimage.gaussian_filter(white, 0.6, mode="wrap")
    return texture * np.float32(sigma_hu / texture.std(dtype=np.float64))
