"""DICOM in and out: CT slices as Hounsfield units, and new de-identified CT series.

Reading decodes what pydicom's plugins decode (gdcm: JPEG and JPEG-LS; openjpeg: JPEG 2000; rle;
deflate and big endian natively) and raises every failure as DicomError. Writing builds each file
from values passed explicitly; it never sees an input dataset, so no input attribute can leak.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (RE_VALID_UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEGExtended12Bit, generate_uid)
from pydicom.valuerep import DSfloat

from ctgen import __version__
from ctgen.errors import DicomError, InputError, OutputError

__all__ = ["Slice", "read_slice", "read_frames", "read_series", "iter_dicom_files", "write_series",
           "write_slice", "AIR_HU", "STORED_OFFSET"]

AIR_HU = -1000.0  # what PixelPaddingValue pixels of a CT become
STORED_OFFSET = 1024  # written files store round(HU + 1024) as int16, RescaleIntercept -1024
_CT_SOP, _SC_SOP = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"
_MODALITY_BY_SOP = {_CT_SOP: "CT", _CT_SOP + ".1": "CT", _CT_SOP + ".2": "CT",  # CT, enhanced, legacy
                    "1.2.840.10008.5.1.4.1.1.4": "MR", "1.2.840.10008.5.1.4.1.1.4.1": "MR"}
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)
_JPEG_GPL = "12-bit JPEG Extended needs the GPL libjpeg decoder: pip install 'ctgen[jpeg-gpl]'"


@dataclass(frozen=True)
class Slice:
    """One CT (or MR) image: HU float32 (H, W) plus the few header values later steps need."""

    hu: np.ndarray
    spacing_mm: tuple[float, float] | None  # (row spacing, column spacing)
    path: str | None
    modality: str
    patient_id: str  # in memory only, for patient-level splits; never written out
    series_uid: str
    position_mm: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance_number: int | None
    slice_thickness_mm: float | None
    window: tuple[float, float] | None  # (center, width)


# ---------------------------------------------------------------------------------------- reading
def read_slice(path, *, allow_mr: bool = False, frame: int | None = None) -> Slice:
    """Read one frame (default 0) of a CT file as HU.

    Rescale slope/intercept or a modality LUT is applied, from the frame's or the shared functional
    group first in enhanced multi-frame files. MONOCHROME1 needs no inversion: the standard applies
    it after the modality LUT, for display only, so rescaled values are HU either way. Pixels equal
    to PixelPaddingValue (or within PixelPaddingRangeLimit) become AIR_HU (0 for MR).
    Raises DicomError: not DICOM, truncated, no pixel data, colour, not CT (MR needs allow_mr=True),
    frame out of range, or pixel data that cannot be decoded.
    """
    with _guard(path, allow_mr) as (ds, modality, n_frames):
        index = 0 if frame is None else frame
        if not 0 <= index < n_frames:
            raise DicomError(path, f"frame {index} out of range (the file has {n_frames})")
        return _slice(ds, path, modality, index, _decode(ds, path, index if n_frames > 1 else None)[0])


def read_frames(path, *, allow_mr: bool = False) -> list[Slice]:
    """Read every frame of a file (one Slice for a single-frame file). Raises DicomError."""
    with _guard(path, allow_mr) as (ds, modality, n_frames):
        stored = _decode(ds, path, None)
        if len(stored) != n_frames:
            raise DicomError(path, f"decoded {len(stored)} frames, the header says {n_frames}")
        return [_slice(ds, path, modality, i, stored[i]) for i in range(n_frames)]


def read_series(source, *, allow_mr: bool = False) -> list[Slice]:
    """Read every frame of a folder (recursively), a file or a list of paths.

    Slices are grouped by SeriesInstanceUID (in order of first appearance) and sorted along the
    slice normal (ImagePositionPatient . normal); where a slice lacks geometry, by InstanceNumber.
    Raises DicomError for the first unreadable file, or when there are no files.
    """
    groups: dict[str, list[Slice]] = {}
    for file in iter_dicom_files(source):
        for one in read_frames(file, allow_mr=allow_mr):
            groups.setdefault(one.series_uid, []).append(one)
    if not groups:
        raise DicomError(source if isinstance(source, (str, os.PathLike)) else None, "no DICOM files found")
    return [one for group in groups.values() for one in _sorted_along_normal(group)]


def iter_dicom_files(paths) -> Iterator[Path]:
    """Expand a path or paths: files as given; folders recursively, in sorted order.

    Inside folders, hidden entries and DICOMDIR are skipped, and so are files that have neither the
    DICM preamble nor a .dcm suffix (READMEs, thumbnails). Raises DicomError for a missing path.
    """
    for path in map(Path, [paths] if isinstance(paths, (str, os.PathLike)) else paths):
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if (file.is_file() and not any(p.startswith(".") for p in file.relative_to(path).parts)
                        and file.name.upper() != "DICOMDIR" and _looks_like_dicom(file)):
                    yield file
        elif path.is_file():
            yield path
        else:
            raise DicomError(path, "no such file or folder")


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return path.suffix.lower() == ".dcm" or fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


@contextlib.contextmanager
def _guard(path, allow_mr: bool):
    # pydicom warns instead of raising on damaged files: record (silence) warnings, convert errors
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = _open(Path(path))
            truncated = any("End of file" in str(w.message) for w in caught)
            yield (ds, *_check(ds, path, allow_mr, truncated))
        except (DicomError, *_FATAL):
            raise
        except BaseException as exc:  # anything at all from damaged files, Rust panics included
            raise DicomError(path, f"cannot read: {_one_line(exc)}") from exc


def _open(path: Path) -> Dataset:
    if not path.is_file():
        raise DicomError(path, "no such file" if not path.exists() else "not a file")
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    try:  # headerless datasets (no preamble, no file meta) still turn up in old archives
        ds = pydicom.dcmread(path, force=True)
        usable = "PixelData" in ds and "Rows" in ds and "Columns" in ds
    except Exception:
        usable = False
    if not usable:
        raise DicomError(path, "not a DICOM file")
    implicit, little = ds.original_encoding
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _check(ds: Dataset, path, allow_mr: bool, truncated: bool) -> tuple[str, int]:
    if "PixelData" not in ds:
        raise DicomError(path, "file is truncated" if truncated else "no pixel data (not an image)")
    modality = str(ds.get("Modality") or _MODALITY_BY_SOP.get(str(ds.get("SOPClassUID")), "")).strip().upper()
    if modality not in (("CT", "MR") if allow_mr else ("CT",)):
        hint = " (pass allow_mr=True to read MR)" if modality == "MR" else ""
        raise DicomError(path, f"modality {modality or 'unknown'} is not CT{hint}")
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = "MONOCHROME2"  # ACR-NEMA style files omit it
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if int(ds.get("SamplesPerPixel") or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(path, f"colour images are not supported (photometric interpretation {photometric})")
    n_frames = int(ds.get("NumberOfFrames") or 1)
    if n_frames < 1:
        raise DicomError(path, f"invalid number of frames {n_frames}")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:  # pydicom pads short native pixel data
        expected, actual = get_expected_length(ds, "bytes"), len(ds.PixelData)
        if actual < expected:
            raise DicomError(path, f"file is truncated (pixel data has {actual} of {expected} bytes)")
    return modality, n_frames


def _decode(ds: Dataset, path, index: int | None) -> np.ndarray:
    """Stored values (frames, H, W), signedness fixed by pydicom, nothing rescaled."""
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        stored = pixel_array(ds, index=index)
    except _FATAL:
        raise
    except BaseException as exc:  # pyo3's PanicException is not an Exception
        needs_gpl = (syntax == JPEGExtended12Bit and int(ds.get("BitsStored") or 8) > 8
                     and "pylibjpeg" not in get_decoder(syntax).available_plugins)
        raise DicomError(path, _JPEG_GPL if needs_gpl else
                         f"cannot decode {syntax.name} pixel data: {_one_line(exc)}") from exc
    return stored.reshape(-1, int(ds.Rows), int(ds.Columns))


def _slice(ds: Dataset, path, modality: str, frame: int, stored: np.ndarray) -> Slice:
    transform = _attr(ds, frame, "PixelValueTransformationSequence")
    source = transform if transform is not None and "RescaleIntercept" in transform else ds
    if "RescaleIntercept" in source and "ModalityLUTSequence" not in source:
        # pydicom ignores functional groups and skips a rescale without slope: hand it the values
        source, rescale = Dataset(), source
        source.RescaleIntercept = rescale.RescaleIntercept
        source.RescaleSlope = rescale.get("RescaleSlope") or 1
    hu = np.array(apply_modality_lut(stored, source), dtype=np.float32)
    if ds.get("PixelPaddingValue") is not None:
        lo = hi = _stored_value(ds, ds.PixelPaddingValue)
        if ds.get("PixelPaddingRangeLimit") is not None:
            lo, hi = sorted((lo, _stored_value(ds, ds.PixelPaddingRangeLimit)))
        hu[(stored >= lo) & (stored <= hi)] = AIR_HU if modality == "CT" else 0.0
    thickness = _floats(_attr(ds, frame, "PixelMeasuresSequence", "SliceThickness"), 1, positive=True)
    center = _floats(_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _floats(_attr(ds, frame, "FrameVOILUTSequence", "WindowWidth"), positive=True)
    number = _floats(ds.get("InstanceNumber"), 1)
    return Slice(
        hu=hu, spacing_mm=_floats(_attr(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2, positive=True),
        path=str(path), modality=modality, patient_id=str(ds.get("PatientID") or ""),
        series_uid=str(ds.get("SeriesInstanceUID") or ""),
        position_mm=_floats(_attr(ds, frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=_floats(_attr(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        instance_number=int(number[0]) if number else None,
        slice_thickness_mm=thickness[0] if thickness else None,
        window=(center[0], width[0]) if center and width else None)


def _attr(ds: Dataset, frame: int, sequence: str, keyword: str | None = None):
    """`keyword` from the frame's functional group, else the shared one, else the top level.

    Without keyword: the first item of `sequence` in the frame's or the shared group, or None.
    """
    for groups, index in ((ds.get("PerFrameFunctionalGroupsSequence"), frame),
                          (ds.get("SharedFunctionalGroupsSequence"), 0)):
        items = groups[index].get(sequence) if groups and index < len(groups) else None
        if items and (keyword is None or items[0].get(keyword) is not None):
            return items[0] if keyword is None else items[0].get(keyword)
    return None if keyword is None else ds.get(keyword)


def _stored_value(ds: Dataset, value) -> int:
    # US or SS by PixelRepresentation: some writers store a signed padding value as US
    value, bits = int(value), int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    return value - (1 << bits) if signed and value >= 1 << (bits - 1) else value


def _floats(value, count: int | None = None, *, positive: bool = False) -> tuple[float, ...] | None:
    # header numbers; None when absent, malformed, non-finite or not `count` of them
    try:
        values = tuple(float(v) for v in ([value] if isinstance(value, (str, bytes, int, float)) else value))
    except (TypeError, ValueError):
        return None
    usable = all(math.isfinite(v) and (v > 0 or not positive) for v in values)
    return values if values and usable and len(values) == (count or len(values)) else None


def _sorted_along_normal(group: list[Slice]) -> list[Slice]:
    orientation = next((s.orientation for s in group if s.orientation), None)
    if orientation is not None and all(s.position_mm is not None for s in group):
        normal = np.cross(orientation[:3], orientation[3:])
        return sorted(group, key=lambda s: (float(np.dot(s.position_mm, normal)), s.instance_number or 0))
    return sorted(group, key=lambda s: (s.instance_number is None, s.instance_number or 0))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------- writing
def write_series(hu, out_dir, *, spacing_mm, description: str, derivation: str, positions_mm=None,
                 orientation=None, patient_id: str = "ANONYMOUS", patient_name: str = "ANONYMOUS",
                 series_number: int = 1, window=(40.0, 80.0), sop_class: str = "ct", force: bool = False,
                 filename_pattern: str = "{index:04d}.dcm", extra_comments: str | None = None,
                 study_uid: str | None = None, series_uid: str | None = None,
                 timestamp: datetime | None = None) -> list[Path]:
    """Write HU, float (N, H, W) or (H, W), as N new single-frame files in out_dir; return the paths.

    sop_class: "ct" (CT Image Storage) or "sc" (Secondary Capture, no patient geometry).
    spacing_mm: (row, column) or one number. positions_mm: (N, 3) ImagePositionPatient; default:
    image centred on the origin, slices stacked along the normal of `orientation` (6 direction
    cosines, default axial) at the mean pixel spacing. window: (center, width) in HU.
    filename_pattern gets `index` (0-based) and `number` (1-based, the InstanceNumber).
    Stored as int16 round(HU + 1024), clipped, RescaleIntercept -1024. One new study and series per
    call unless study_uid / series_uid are given; with series_uid given, the instance and frame-of-reference
    UIDs derive from it, so together with `timestamp` (content date/time, default now) the files are
    byte-reproducible. Over-long descriptions are truncated.
    Raises InputError for bad arrays or options; OutputError when a target exists and not force (all
    are checked before any is written) or cannot be written. Files are renamed into place from
    hidden temporary files beside them.
    """
    volume = _volume(hu, out_dir)
    try:
        names = [filename_pattern.format(index=i, number=i + 1) for i in range(len(volume))]
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(out_dir, f"bad filename pattern {filename_pattern!r}: {_one_line(exc)}") from exc
    if len(set(names)) != len(names) or any(Path(n).name != n or n in (".", "..") for n in names):
        raise InputError(out_dir, f"filename pattern {filename_pattern!r} must give distinct plain file names")
    make = _planner(volume, out_dir, spacing_mm=spacing_mm, description=description, derivation=derivation,
                    positions_mm=positions_mm, orientation=orientation, patient_id=patient_id,
                    patient_name=patient_name, series_number=series_number, window=window, sop_class=sop_class,
                    extra_comments=extra_comments, study_uid=study_uid, series_uid=series_uid,
                    timestamp=timestamp)
    return _write_all([Path(out_dir) / name for name in names], make, force)


def write_slice(hu, path, **options) -> Path:
    """Write one HU slice, float (H, W), to `path`; options as write_series (positions_mm: (3,))."""
    force = options.pop("force", False)
    if np.ndim(hu) != 2:
        raise InputError(path, f"expected HU of shape (H, W), got {np.shape(hu)}")
    return _write_all([Path(path)], _planner(_volume(hu, path), path, **options), force)[0]


def _volume(hu, where) -> np.ndarray:
    try:
        volume = np.asarray(hu, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(where, f"HU must be a numeric array: {_one_line(exc)}") from exc
    volume = volume[None] if volume.ndim == 2 else volume
    if volume.ndim != 3 or 0 in volume.shape:
        raise InputError(where, f"expected HU of shape (N, H, W) or (H, W), got {np.shape(hu)}")
    if not np.isfinite(volume).all():
        raise InputError(where, "HU contains NaN or infinite values")
    return volume


def _vector(value, size: int, name: str, where) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.size != size or not np.isfinite(array).all():
        raise InputError(where, f"{name} must be {size} finite numbers, got {value!r}")
    return array


def _text(value, name: str, where) -> str:
    if not isinstance(value, str) or len(value.encode()) > 64 or any(c == "\\" or ord(c) < 32 for c in value):
        raise InputError(where, f"{name} must be at most 64 bytes (UTF-8) without \\ or control characters")
    return value


def _clip(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")  # DICOM lengths count bytes (UTF-8 here)


def _uid(value: str | None, name: str, where) -> str:
    if value is not None and not (len(str(value)) <= 64 and RE_VALID_UID.match(str(value))):
        raise InputError(where, f"{name} is not a valid UID: {value!r}")
    return generate_uid() if value is None else str(value)


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)  # fits the 16-character limit of DS


def _planner(volume: np.ndarray, where, *, spacing_mm, description: str, derivation: str, positions_mm=None,
             orientation=None, patient_id="ANONYMOUS", patient_name="ANONYMOUS", series_number=1,
             window=(40.0, 80.0), sop_class="ct", extra_comments=None, study_uid=None, series_uid=None,
             timestamp: datetime | None = None):
    # check every option before any file exists; make(index) builds a dataset from these values only
    if sop_class not in ("ct", "sc"):
        raise InputError(where, f"sop_class must be 'ct' or 'sc', got {sop_class!r}")
    count, rows, cols = volume.shape
    spacing = _vector(np.resize(spacing_mm, 2) if np.size(spacing_mm) == 1 else spacing_mm, 2, "spacing_mm",
                      where)
    if (spacing <= 0).any():
        raise InputError(where, f"spacing_mm must be positive, got {spacing_mm!r}")
    cosines = _vector((1, 0, 0, 0, 1, 0) if orientation is None else orientation, 6, "orientation", where)
    norms = np.linalg.norm(cosines.reshape(2, 3), axis=1)
    row_dir, col_dir = cosines[:3] / max(norms[0], 1e-12), cosines[3:] / max(norms[1], 1e-12)
    if min(norms) < 1e-6 or abs(float(row_dir @ col_dir)) > 1e-3:
        raise InputError(where, f"orientation must be two orthogonal direction cosines, got {orientation!r}")
    normal, step = np.cross(row_dir, col_dir), float(spacing.mean())
    if positions_mm is None:
        origin = -(cols - 1) / 2 * spacing[1] * row_dir - (rows - 1) / 2 * spacing[0] * col_dir
        positions = origin + np.arange(count)[:, None] * step * normal
    else:
        positions = _vector(positions_mm, 3 * count, "positions_mm", where).reshape(count, 3)
    gaps = np.abs(np.diff(np.sort(positions @ normal)))
    thickness = float(np.median(gaps)) if count > 1 and np.median(gaps) > 0 else step
    center, width = _vector(window, 2, "window", where)
    if width < 1:
        raise InputError(where, f"window width must be at least 1 HU, got {width}")
    patient_id = _text(patient_id, "patient_id", where)
    patient_name = _text(patient_name, "patient_name", where)
    texts = [patient_id, patient_name, str(description), str(derivation), str(extra_comments or "")]
    label = _clip("".join(" " if c == "\\" or ord(c) < 32 else c for c in texts[2]), 64)
    comments = _clip(texts[3] + ("\n" + texts[4] if texts[4] else ""), 10240)
    study, series = _uid(study_uid, "study_uid", where), _uid(series_uid, "series_uid", where)
    # A caller that fixes the series UID (a seeded phantom study) gets reproducible files: the other UIDs
    # derive from it; otherwise every call is a new series with fresh random UIDs.
    def derived_uid(*parts: str) -> str:
        return generate_uid() if series_uid is None else generate_uid(entropy_srcs=[series, *parts])

    frame_of_reference, is_ct, unicode = derived_uid("for"), sop_class == "ct", not all(t.isascii() for t in texts)
    date, time = (timestamp or datetime.now()).strftime("%Y%m%d %H%M%S").split()

    def make(index: int) -> Dataset:
        ds = Dataset()
        if unicode:
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = (_CT_SOP if is_ct else _SC_SOP), derived_uid("sop", str(index))
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if is_ct else ["DERIVED", "SECONDARY"]
        ds.InstanceCreationDate = ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.InstanceCreationTime = ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID, ds.Laterality = "", "", "1", ""
        ds.Modality, ds.Manufacturer, ds.SoftwareVersions = "CT", "ctgen", f"ctgen {__version__}"
        ds.SeriesDescription, ds.ImageComments = label, comments
        ds.DerivationDescription = _clip(f"ctgen {__version__}: {texts[3]}", 1024)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "", ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "ctgen: new dataset, allow-listed values only"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SeriesNumber, ds.InstanceNumber = int(series_number), index + 1
        ds.PixelSpacing, ds.BurnedInAnnotation = [_ds(spacing[0]), _ds(spacing[1])], "NO"
        if is_ct:
            ds.PatientPosition, ds.KVP, ds.AcquisitionNumber = "", "", ""
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
            ds.ImagePositionPatient = [_ds(v) for v in positions[index]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.SliceThickness, ds.SliceLocation = _ds(thickness), _ds(positions[index] @ normal)
        else:
            ds.ConversionType, ds.PatientOrientation = "SYN", ""
        stored = np.clip(np.rint(volume[index].astype(np.float64) + STORED_OFFSET), -32768, 32767)
        ds.set_pixel_data(stored.astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -STORED_OFFSET, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = _ds(center), _ds(width)
        return ds  # dcmwrite(enforce_file_format=True) derives the file meta from it

    return make


def _write_all(targets: list[Path], make, force: bool) -> list[Path]:
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(existing[0], f"already exists{more}; pass force to overwrite")
    if folders := [t for t in existing if t.is_dir()]:
        raise OutputError(folders[0], "is a folder")
    written: list[Path] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for index, target in enumerate(targets):
                ds = make(index)
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
                try:
                    with open(temporary, "xb") as fh:
                        pydicom.dcmwrite(fh, ds, enforce_file_format=True)
                    os.replace(temporary, target)
                finally:
                    temporary.unlink(missing_ok=True)
                written.append(target)
    except BaseException as exc:  # leave no half-written series: remove the files this call created
        for target in written:
            if target not in existing:
                target.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(exc.filename or targets[len(written)], _one_line(exc)) from exc
        raise
    return targets
