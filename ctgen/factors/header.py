"""Factors that a DICOM header gives: age, sex, contrast agent, kVp, kernel and slice thickness."""

from __future__ import annotations

import math

__all__ = ["SEX_CODES", "from_header"]

SEX_CODES = {"M": 0.0, "F": 1.0}  # PatientSex; "O" and absent give NaN


def from_header(header) -> dict[str, float | str]:
    """The header factors of one ``ctgen.io.dicom.header.Header``: floats (NaN where the header lacks the value)
    ``age_years``, ``sex`` (0 male, 1 female), ``contrast`` (1 when ContrastBolusAgent names an agent, else 0),
    ``kvp``, ``slice_thickness_mm``; and ``kernel``, the ConvolutionKernel text ("" when absent)."""

    def number(value) -> float:
        return math.nan if value is None else float(value)

    return {
        "age_years": number(header.age_years),
        "sex": SEX_CODES.get(header.sex, math.nan),
        "contrast": 1.0 if header.contrast_agent else 0.0,
        "kvp": number(header.kvp),
        "slice_thickness_mm": number(header.slice_thickness_mm),
        "kernel": header.kernel,
    }
