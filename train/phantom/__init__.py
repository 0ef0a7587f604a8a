"""Synthetic brain-CT studies with known factors of variation, built on the MNI152 2009a template.

``python -m train.phantom --patients 350 --slices 28 --out data/phantom --seed 0``
"""

from __future__ import annotations

from train.phantom.anatomy import load_anatomy, template_paths
from train.phantom.render import (
    FACTORS,
    LEVEL_RANGE_MNI,
    MATRIX,
    PIXEL_MM,
    Factor,
    level_to_z_mm,
    render_slice,
    render_tissues,
    sample_patient,
    slice_levels,
)
from train.phantom.study import CSV_COLUMNS, generate_study, patient_id, render_patient

__all__ = [
    "CSV_COLUMNS",
    "FACTORS",
    "LEVEL_RANGE_MNI",
    "MATRIX",
    "PIXEL_MM",
    "Factor",
    "generate_study",
    "level_to_z_mm",
    "load_anatomy",
    "patient_id",
    "render_patient",
    "render_slice",
    "render_tissues",
    "sample_patient",
    "slice_levels",
    "template_paths",
]
