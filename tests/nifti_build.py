"""Small NIfTI files for tests, built as bytes: a header from nibabel with chosen fields, the voxels, gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def nifti_bytes(data: np.ndarray, *, spacing_mm: float = 1.0, version: int = 1, compress: bool = False,
                **fields) -> bytes:
    """A single-file NIfTI-1 or -2 volume of ``data`` (stored as given) with a diagonal affine of ``spacing_mm``;
    ``fields`` overwrite header fields (``dim``, ``pixdim``, ``scl_slope``...) after nibabel filled them in."""
    import nibabel

    kind = nibabel.Nifti1Image if version == 1 else nibabel.Nifti2Image
    image = kind(data, np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0]))
    image.header.set_slope_inter(1.0, 0.0)
    header = image.header
    header["vox_offset"] = len(header.binaryblock) + 4
    for name, value in fields.items():
        header[name] = value
    offset = float(header["vox_offset"])
    offset = int(offset) if np.isfinite(offset) and len(header.binaryblock) + 4 <= offset < 1 << 16 \
        else len(header.binaryblock) + 4
    raw = header.binaryblock + b"\0" * (offset - len(header.binaryblock)) \
        + np.asarray(data, order="F").tobytes(order="F")
    return gzip.compress(raw, mtime=0) if compress else raw


def write_nifti(path: Path, data: np.ndarray, **options) -> Path:
    path.write_bytes(nifti_bytes(data, compress=str(path).endswith(".gz"), **options))
    return path


def ct_volume(shape=(24, 20, 3), dtype=np.int16) -> np.ndarray:
    """A small head-like CT volume in HU: air around a water disc."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    disc = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (min(shape[:2]) / 3) ** 2
    return np.repeat(np.where(disc, 40, -1000)[:, :, None], shape[2], axis=2).astype(dtype)
