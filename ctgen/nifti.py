"""NIfTI volumes (``.nii``, ``.nii.gz``) as stacks of axial CT slices in Hounsfield units.

The public head-CT datasets (PhysioNet CT-ICH, converted CQ500) ship as NIfTI. A volume is reoriented by its
affine so that its slices are axial with DICOM's usual in-plane layout: rows run anterior to posterior,
columns right to left (the patient's left on the image's right), slices inferior to superior. Slice ``k`` of
a volume is named ``VOLUME#k`` (0-based, inferior first). Values are the stored values through the header's
scale slope and intercept (nibabel), taken as HU.

A JSON sidecar next to the volume (``scan.json`` beside ``scan.nii.gz``, as dcm2niix writes) may name the
DICOM values that the volume lost: PatientID, PatientBirthDate, PatientSex, StudyInstanceUID,
SeriesInstanceUID, SeriesNumber, SeriesDescription, Modality, ImageType, ConvolutionKernel. Without
one, each file is its own patient.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.errors import DicomError
from ctgen.geometry import axial_tilt_deg

__all__ = ["NIFTI_SUFFIXES", "Volume", "is_nifti", "read_sidecar", "read_volume", "sidecar_path", "volume_header"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_AXIAL_CODES = ("P", "L", "S")  # array axes: rows to posterior, columns to the patient's left, slices up


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a NIfTI file by its suffix (.nii or .nii.gz, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that belongs to a volume: scan.nii.gz -> scan.json."""
    path = Path(path)
    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]
    return path.with_name(stem + ".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The volume's JSON sidecar as a dict ({} when there is none or it is not a JSON object)."""
    try:
        value = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Volume:
    """A volume's header, reoriented to an axial stack: ``shape`` (rows, columns, slices), ``spacing_mm``
    (row, column, slice), ``tilt_deg`` (angle between the slice normal and the head-foot axis), and the
    sidecar's values (``sidecar``)."""

    path: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    tilt_deg: float
    sidecar: dict[str, Any]

    @property
    def slices(self) -> int:
        return self.shape[2]


def volume_header(path: str | os.PathLike) -> Volume:
    """Read a NIfTI header (no voxel data). Raises DicomError for a file nibabel cannot read or that is not
    a 2-D or 3-D image."""
    image = _load(path)
    return _volume(path, image)


def read_volume(path: str | os.PathLike, indices: list[int] | None = None) -> list:
    """Axial slices of a volume as ``ctgen.dicom.Slice`` objects (HU float32 (rows, columns), spacing in mm,
    LPS position and orientation as DICOM states them), inferior first; ``indices`` picks slices (0-based).

    Raises DicomError for unreadable files, non-3-D images or an index out of range.
    """
    from ctgen.dicom import Slice

    image = _load(path)
    volume = _volume(path, image)
    wanted = list(range(volume.slices)) if indices is None else list(indices)
    for index in wanted:
        if not 0 <= index < volume.slices:
            raise DicomError(path, f"slice {index} out of range (the volume has {volume.slices} axial slices)")
    try:
        data = image.get_fdata(dtype=np.float32)  # stored values through scl_slope / scl_inter
    except Exception as exc:  # noqa: BLE001 - damaged or cut-short data
        raise DicomError(path, f"cannot read the voxel data: {_one_line(exc)}") from None
    data = data.reshape(data.shape[:3]) if data.ndim > 3 else data.reshape(data.shape + (1,) * (3 - data.ndim))
    affine = image.affine
    row_dir, col_dir = _unit(affine[:3, 1]), _unit(affine[:3, 0])  # along a row (columns), along a column (rows)
    orientation = tuple(float(v) for v in (*_lps(row_dir), *_lps(col_dir)))
    sidecar = volume.sidecar
    patient_id = str(sidecar.get("PatientID") or "")
    series_uid = str(sidecar.get("SeriesInstanceUID") or "")
    modality = str(sidecar.get("Modality") or "CT").upper()
    slices = []
    for index in wanted:
        hu = np.ascontiguousarray(data[:, :, index], dtype=np.float32)
        position = tuple(float(v) for v in _lps(affine[:3, :3] @ np.array([0.0, 0.0, index]) + affine[:3, 3]))
        slices.append(Slice(hu=hu, spacing_mm=volume.spacing_mm[:2], path=f"{path}#{index}", modality=modality,
                            patient_id=patient_id, series_uid=series_uid, position_mm=position,
                            orientation=orientation, instance_number=index + 1,
                            slice_thickness_mm=volume.spacing_mm[2], window=None))
    return slices


def _load(path: str | os.PathLike):
    try:
        import nibabel
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
    except ImportError:  # pragma: no cover - nibabel is a runtime dependency
        raise DicomError(path, "reading NIfTI needs nibabel: pip install nibabel") from None
    if not Path(path).is_file():
        raise DicomError(path, "no such file" if not Path(path).exists() else "not a file")
    try:
        image = nibabel.load(os.fspath(path))
        if len(image.shape) < 2 or len(image.shape) > 4 or (len(image.shape) == 4 and image.shape[3] != 1):
            raise DicomError(path, f"not a 3-D volume (shape {image.shape})")
        if len(image.shape) != 3:
            image = nibabel.Nifti1Image(np.asanyarray(image.dataobj).reshape(image.shape[:2] + (-1,)), image.affine,
                                        image.header)
        transform = ornt_transform(io_orientation(image.affine), axcodes2ornt(_AXIAL_CODES))
        return image.as_reoriented(transform)
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        raise DicomError(path, f"not a readable NIfTI file ({_one_line(exc)})") from None


def _volume(path, image) -> Volume:
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = tuple(float(np.linalg.norm(affine[:3, axis])) for axis in range(3))
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DicomError(path, f"bad voxel size {spacing}")
    tilt = axial_tilt_deg((*affine[:3, 0], *affine[:3, 1]))  # the voxel axes as row and column directions
    shape = tuple(int(n) for n in image.shape[:3])
    return Volume(path=str(path), shape=shape, spacing_mm=spacing, tilt_deg=tilt, sidecar=read_sidecar(path))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _lps(ras: np.ndarray) -> np.ndarray:
    """RAS (NIfTI) coordinates or directions to LPS (DICOM)."""
    return np.array([-ras[0], -ras[1], ras[2]], dtype=np.float64)


def _one_line(exc: BaseException) -> str:
    from ctgen.dicom.common import one_line

    return one_line(exc)
