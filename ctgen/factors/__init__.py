"""Factors measured on every slice, no model needed: one implementation for scan, training, evaluation and the
commands. numpy only.

- ``measure_slice(hu, spacing_mm)``: the image factors of one HU slice.
- ``measure_series(slices)``: those of every slice of a series, plus its level and the head's largest size;
  ``measure_slices(slices)`` the same for slices of many series.
- ``from_header(header)``: what the DICOM header says (age, sex, contrast, kVp, kernel, slice thickness).

``FACTORS`` names each factor with its unit and what it measures; a factor that cannot be measured on a slice
is NaN, never a guess.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ctgen.factors.header import SEX_CODES, from_header
from ctgen.factors.image import CSF_HU, ENHANCING_HU, measure_slice, principal_axes
from ctgen.factors.series import measure_series, measure_slices, slice_levels


class Factor(NamedTuple):
    """One measured factor: ``source`` is "image" (one slice), "series" (the slice within its series) or
    "header" (the DICOM header)."""

    name: str
    unit: str
    source: str
    description: str


FACTORS: tuple[Factor, ...] = (
    Factor("rotation_deg", "deg", "image", "in-plane rotation: angle from the image's vertical of the head's "
           "axis nearer to it, counter-clockwise on screen, -45 to 45 (NaN for a round head)"),
    Factor("head_width_mm", "mm", "image", "head width: the short axis of the ellipse with the head mask's moments"),
    Factor("head_length_mm", "mm", "image", "head length: the long axis of the ellipse with the head mask's moments"),
    Factor("head_area_mm2", "mm²", "image", "head cross-section (table and head holder left out)"),
    Factor("skull_mm", "mm", "image", "skull thickness: median over rays of the bone run past the cranial cavity, "
           "between half-maximum edges, along the normal"),
    Factor("csf_fraction", "", "image", f"share of the cranial cavity at CSF density ({CSF_HU[0]:g} to "
           f"{CSF_HU[1]:g} HU): ventricles and sulci, the sign of atrophy"),
    Factor("ventricle_mm2", "mm²", "image", "CSF area in the centre of the cranial cavity (inside half its "
           "equivalent ellipse): the ventricles"),
    Factor("brain_hu", "HU", "image", "mean HU inside the cranial cavity (-100 to 300 HU)"),
    Factor("enhancing_fraction", "", "image", f"share of the cranial cavity at {ENHANCING_HU[0]:g} to "
           f"{ENHANCING_HU[1]:g} HU: contrast-filled vessels"),
    Factor("noise_hu", "HU", "image", "image noise: robust standard deviation of the high-pass residual inside "
           "the cranial cavity"),
    Factor("level", "", "series", "slice level: 0 at the series' lowest slice with brain (the skull base), 1 at "
           "its highest with head (the vertex)"),
    Factor("head_area_max_mm2", "mm²", "series", "the largest head cross-section among the series' slices with brain"),
    Factor("head_width_max_mm", "mm", "series", "the largest head width among the series' slices with brain"),
    Factor("head_length_max_mm", "mm", "series", "the largest head length among the series' slices with brain"),
    Factor("age_years", "years", "header", "PatientAge"),
    Factor("sex", "", "header", "PatientSex: 0 male, 1 female"),
    Factor("contrast", "", "header", "1 when ContrastBolusAgent names an agent, else 0"),
    Factor("kvp", "kV", "header", "KVP: tube voltage"),
    Factor("kernel", "", "header", "ConvolutionKernel (text)"),
    Factor("slice_thickness_mm", "mm", "header", "SliceThickness"),
)

# what a factor can be; the others are sizes, counts and noise: 0 and up
_PHYSICAL_RANGE = {"rotation_deg": (-90.0, 90.0), "brain_hu": (-math.inf, math.inf), "level": (0.0, 1.0),
                   "csf_fraction": (0.0, 1.0), "enhancing_fraction": (0.0, 1.0)}


def physical_range(name: str) -> tuple[float, float]:
    """(low, high): the values factor ``name`` can take (a negative area or a level past the vertex cannot be)."""
    return _PHYSICAL_RANGE.get(name, (0.0, math.inf))


__all__ = ["CSF_HU", "ENHANCING_HU", "FACTORS", "SEX_CODES", "Factor", "from_header", "measure_series",
           "measure_slice", "measure_slices", "physical_range", "principal_axes", "slice_levels"]
