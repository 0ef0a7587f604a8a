"""One file of an archive and its decision: the ``Entry`` that ``ctgen.io.scan`` lists, and ``decide``, which
gives a file one reason code of ``REASONS`` from its header alone (``ctgen.io.dicom.header``; a NIfTI volume without
a sidecar naming its modality is the one case whose voxels are read: CT has air below -500 HU).
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctgen.io.dicom.common import MODALITY_BY_SOP, SC_SOP, one_line
from ctgen.io.dicom.limits import LimitError
from ctgen.io.dicom.validate import shown as _shown
from ctgen.errors import DicomError
from ctgen.images.geometry import axial_tilt_deg
from ctgen.io.nifti import is_nifti

__all__ = ["REASONS", "ROW_FIELDS", "SKIP_REASONS", "Entry", "decide", "shown_path"]

REASONS = ("ok", "not-dicom", "unreadable", "truncated", "no-image", "not-ct", "colour", "invalid",
           "secondary-capture", "localizer", "not-axial", "duplicate")
SKIP_REASONS = REASONS[1:]
ROW_FIELDS = ("path", "reason", "detail", "patient", "study", "series", "frames", "series_number",
               "slice_thickness_mm", "kernel", "fov_mm", "spacing_mm", "tilt_deg")
_LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM"}


@dataclass
class Entry:
    """One file of the archive and its decision: ``reason`` (one of REASONS) and a free-text ``detail``;
    ``frames``: images it holds (frames of a multi-frame file, axial slices of a volume; 0 when none).
    ``patient``, ``study`` and ``series`` are 16-hex-digit hashes; the identity fields below them stay in
    memory (they feed the keys and the duplicate check) and are never written."""

    path: str
    reason: str
    detail: str = ""
    kind: str = ""  # "dicom", "nifti" or "" (not an image file we know)
    frames: int = 0
    patient: str = ""
    study: str = ""
    series: str = ""
    series_number: int | None = None
    series_description: str = ""
    slice_thickness_mm: float | None = None
    kernel: str = ""
    fov_mm: float | None = None
    spacing_mm: float | None = None
    tilt_deg: float | None = None
    lossy: bool = False
    patient_id: str = field(default="", repr=False)
    birth_date: str = field(default="", repr=False)
    sex: str = field(default="", repr=False)
    study_uid: str = field(default="", repr=False)
    series_uid: str = field(default="", repr=False)
    sop_instance: str = field(default="", repr=False)

    @property
    def used(self) -> bool:
        return self.reason == "ok"

    def row(self) -> dict[str, Any]:
        """The file's inventory row (JSON-ready; no identifier of the patient)."""
        values = {name: getattr(self, name) for name in ROW_FIELDS}
        values["path"] = shown_path(self.path)
        for name in ("slice_thickness_mm", "fov_mm", "spacing_mm", "tilt_deg"):
            if values[name] is not None:
                values[name] = round(values[name], 3)
        return values



def decide(path: Path, max_tilt_deg: float) -> Entry:
    unreadable = _unreadable(path)
    if unreadable:
        return Entry(str(path), "unreadable", unreadable)
    try:
        if is_nifti(path):
            return _decide_nifti(path, max_tilt_deg)
        return _decide_dicom(path, max_tilt_deg)
    except OSError as error:
        return Entry(str(path), "unreadable", f"cannot read ({error.strerror or error})")
    except Exception as error:  # noqa: BLE001 - one damaged file must not stop the scan of an archive
        return Entry(str(path), "unreadable", f"internal error: {type(error).__name__}: {one_line(error)}")


def _unreadable(path: Path) -> str:
    """Why ``path`` is not a file that can be read ("" when it is one), without opening it: a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"cannot read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path):
                pass
        except OSError as error:
            return f"cannot list the folder ({error.strerror or error}); its files are not scanned"
        return "a folder given as a file"
    if not stat.S_ISREG(mode):
        kind = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
                stat.S_ISBLK: "a block device"}
        return "not a regular file (" + next((name for test, name in kind.items() if test(mode)), "special") + ")"
    return ""


def _decide_dicom(path: Path, max_tilt_deg: float) -> Entry:
    from ctgen.io.dicom.header import read_header

    try:
        header = read_header(path)
    except LimitError as error:
        return Entry(str(path), "invalid", error.reason)
    except DicomError as error:
        return Entry(str(path), "not-dicom", error.reason)
    spacing = header.pixel_spacing_mm
    fov = header.reconstruction_diameter_mm
    if fov is None and spacing is not None and header.columns:
        fov = max(header.rows * spacing[0], header.columns * spacing[1])
    tilt = axial_tilt_deg(header.orientation) if header.orientation is not None else None
    if tilt is not None and math.isnan(tilt):
        tilt = None
    entry = Entry(
        str(path), "ok", kind="dicom", frames=header.frames if header.pixels != "none" else 0,
        series_number=header.series_number, series_description=header.series_description,
        slice_thickness_mm=header.slice_thickness_mm, kernel=header.kernel, fov_mm=fov,
        spacing_mm=(spacing[0] + spacing[1]) / 2 if spacing else None, tilt_deg=tilt, lossy=header.lossy,
        patient_id=header.patient_id, birth_date=header.birth_date, sex=header.sex, study_uid=header.study_uid,
        series_uid=header.series_uid, sop_instance=header.sop_instance)
    entry.reason, entry.detail = _reason(header, tilt, max_tilt_deg)
    if entry.reason != "ok":
        entry.frames = 0 if entry.reason in ("truncated", "no-image") else entry.frames
    return entry


def _reason(header, tilt: float | None, max_tilt_deg: float) -> tuple[str, str]:
    if header.truncated:
        return "truncated", "the file ends before its pixel data does" if header.pixels != "none" else \
            "the file ends inside its header"
    if header.pixels == "none":
        return "no-image", f"no pixel data ({_sop_name(header.sop_class) or header.modality or 'unknown kind'})"
    if header.sop_class.startswith(SC_SOP):
        return "secondary-capture", f"secondary capture{f' ({header.conversion_type})' if header.conversion_type else ''}"
    modality = header.modality or MODALITY_BY_SOP.get(header.sop_class, "")
    if modality != "CT":
        return "not-ct", f"modality {modality or 'unknown'}"
    if header.samples_per_pixel != 1 or header.photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        shown = _shown(header.photometric) if header.photometric else "?"
        return "colour", f"photometric interpretation {shown}, {header.samples_per_pixel} samples"
    if header.invalid:
        return "invalid", header.invalid
    localizer = _LOCALIZER_TYPES.intersection(header.image_type)
    if localizer:
        return "localizer", f"image type {'/'.join(header.image_type)}"
    return _orientation_reason(tilt, max_tilt_deg, header.gantry_tilt_deg, header.orientation is None)


def _orientation_reason(tilt: float | None, max_tilt_deg: float, gantry_tilt: float | None = None,
                        unknown: bool = False) -> tuple[str, str]:
    if tilt is not None and tilt > max_tilt_deg:
        plane = "coronal or sagittal" if tilt > 80 else "oblique"
        return "not-axial", f"slice normal {tilt:.0f}° from the head-foot axis ({plane}; limit {max_tilt_deg:g}°)"
    notes = []
    if tilt is not None and tilt >= 0.5:
        notes.append(f"tilted {tilt:.1f}°")
    if gantry_tilt:
        notes.append(f"gantry tilt {gantry_tilt:g}°")
    if unknown:
        notes.append("no orientation in the header (taken as axial)")
    return "ok", "; ".join(notes)


def _decide_nifti(path: Path, max_tilt_deg: float) -> Entry:
    from ctgen.io.nifti import check_volume

    try:
        volume = check_volume(path)  # the reader's checks; the voxels too where they decide
    except DicomError as error:
        return Entry(str(path), "not-dicom", error.reason, kind="nifti")
    side = volume.sidecar
    fov = max(volume.shape[0] * volume.spacing_mm[0], volume.shape[1] * volume.spacing_mm[1])
    kernel = side.get("ConvolutionKernel") or ""
    entry = Entry(
        str(path), "ok", kind="nifti", frames=volume.slices, series_number=_int(side.get("SeriesNumber")),
        series_description=str(side.get("SeriesDescription") or ""),
        slice_thickness_mm=_float(side.get("SliceThickness")) or volume.spacing_mm[2],
        kernel="\\".join(map(str, kernel)) if isinstance(kernel, list) else str(kernel), fov_mm=fov,
        spacing_mm=(volume.spacing_mm[0] + volume.spacing_mm[1]) / 2, tilt_deg=volume.tilt_deg,
        patient_id=str(side.get("PatientID") or ""), birth_date=str(side.get("PatientBirthDate") or ""),
        sex=str(side.get("PatientSex") or "").upper(), study_uid=str(side.get("StudyInstanceUID") or ""),
        series_uid=str(side.get("SeriesInstanceUID") or ""))
    image_type = side.get("ImageType") or []
    image_type = {str(v).upper() for v in (image_type if isinstance(image_type, list) else str(image_type).split("\\"))}
    modality = str(side.get("Modality") or "").upper()
    if modality and modality != "CT":
        entry.reason, entry.detail = "not-ct", f"modality {modality} (sidecar)"
    elif _LOCALIZER_TYPES & image_type:
        entry.reason, entry.detail = "localizer", "image type in the sidecar"
    elif not modality and not (volume.min_hu is not None and volume.min_hu < -500.0):  # CT has air around the head
        entry.reason, entry.detail = "not-ct", "no values below -500: not CT in HU"
    else:
        entry.reason, entry.detail = _orientation_reason(volume.tilt_deg, max_tilt_deg)
    return entry


def shown_path(text: str) -> str:
    """A path as text that any encoding writes: bytes of a name that are not UTF-8 (held as surrogates by
    ``os.fsdecode``) become backslash escapes, e.g. ``\\xff``."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _sop_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # about a malformed UID: it has no name then
            name = UID(uid).name
        return "" if name == uid else name
    except Exception:  # noqa: BLE001
        return ""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
