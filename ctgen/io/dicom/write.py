"""Writing new de-identified CT series: HU arrays in, DICOM files out (``write_series``, ``write_slice``).

Each file is built from values passed explicitly; the writer never sees an input dataset, so no input
attribute can leak. ``ctgen.io.dicom`` re-exports the public names next to the readers'.
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID, generate_uid
from pydicom.valuerep import DSfloat

from ctgen import __version__
from ctgen.io.dicom.common import CT_SOP as _CT_SOP
from ctgen.io.dicom.common import SC_SOP as _SC_SOP
from ctgen.io.atomic import Claims, atomic_file
from ctgen.io.dicom.common import one_line as _one_line
from ctgen.defaults import BRAIN_WINDOW, WINDOWS
from ctgen.errors import InputError, OutputError

__all__ = ["SeriesWriter", "write_series", "write_slice", "STORED_OFFSET"]

STORED_OFFSET = 1024  # written files store round(HU + 1024) as int16, RescaleIntercept -1024


def write_series(hu, out_dir, *, spacing_mm, description: str, derivation: str, positions_mm=None,
                 orientation=None, patient_id: str = "ANONYMOUS", patient_name: str = "ANONYMOUS",
                 series_number: int = 1, window=BRAIN_WINDOW, sop_class: str = "ct", force: bool = False,
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
    are checked before any is written) or cannot be written; a failed call removes the files it made.
    """
    volume = _volume(hu, out_dir)
    try:
        names = [filename_pattern.format(index=i, number=i + 1) for i in range(len(volume))]
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(out_dir, f"bad filename pattern {filename_pattern!r}: {_one_line(exc)}") from exc
    if len(set(names)) != len(names) or any(Path(n).name != n or n in (".", "..") for n in names):
        raise InputError(out_dir, f"filename pattern {filename_pattern!r} must give distinct plain file names")
    writer = SeriesWriter(volume.shape, out_dir, spacing_mm=spacing_mm, description=description,
                          derivation=derivation, positions_mm=positions_mm, orientation=orientation,
                          patient_id=patient_id, patient_name=patient_name, series_number=series_number,
                          window=window, sop_class=sop_class, extra_comments=extra_comments, study_uid=study_uid,
                          series_uid=series_uid, timestamp=timestamp)
    targets = [Path(out_dir) / name for name in names]
    existing = [t for t in targets if os.path.lexists(t)]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(existing[0], f"already exists{more}; pass force to overwrite")
    if folders := [t for t in existing if t.is_dir()]:
        raise OutputError(folders[0], "is a folder")
    claims = Claims()
    try:
        for index, target in enumerate(targets):
            writer.write(index, volume[index], target, force=force)
            claims.add(target)
    except BaseException:  # leave no half-written series
        claims.rollback()
        raise
    return targets


def write_slice(hu, path, **options) -> Path:
    """Write one HU slice, float (H, W), to `path`; options as write_series (positions_mm: (3,))."""
    force = options.pop("force", False)
    if np.ndim(hu) != 2:
        raise InputError(path, f"expected HU of shape (H, W), got {np.shape(hu)}")
    volume = _volume(hu, path)
    return SeriesWriter(volume.shape, path, **options).write(0, volume[0], Path(path), force=force)


class SeriesWriter:
    """One de-identified series written file by file, for outputs that stream: every option of
    ``write_series`` is checked once here, before any file exists; ``write(index, hu, path)`` then writes
    instance ``index`` (0-based) of ``shape[0]`` atomically (``ctgen.io.atomic``; exclusive unless ``force``).

    ``shape``: (N, H, W) of the whole series; ``where`` names it in errors. Raises InputError / OutputError.
    """

    def __init__(self, shape: tuple[int, int, int], where, **options):
        self.shape = tuple(int(n) for n in shape)
        self.where = where
        self._make = _planner(self.shape, where, **options)

    def dataset(self, index: int, hu) -> Dataset:
        """Instance ``index`` of the series holding ``hu`` (HU, (H, W), finite) as a pydicom Dataset."""
        image = np.asarray(hu, dtype=np.float32)
        if image.shape != self.shape[1:] or not 0 <= index < self.shape[0]:
            raise InputError(self.where, f"instance {index} of {self.shape} cannot hold an image of {image.shape}")
        if not np.isfinite(image).all():
            raise InputError(self.where, "HU contains NaN or infinite values")
        return self._make(index, image)

    def write(self, index: int, hu, path: Path, *, force: bool = False) -> Path:
        ds = self.dataset(index, hu)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with atomic_file(path, force=force) as handle:
                pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        return Path(path)


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


def _planner(shape: tuple[int, int, int], where, *, spacing_mm, description: str, derivation: str, positions_mm=None,
             orientation=None, patient_id="ANONYMOUS", patient_name="ANONYMOUS", series_number=1,
             window=BRAIN_WINDOW, sop_class="ct", extra_comments=None, study_uid=None, series_uid=None,
             timestamp: datetime | None = None):
    # check every option before any file exists; make(index) builds a dataset from these values only
    if sop_class not in ("ct", "sc"):
        raise InputError(where, f"sop_class must be 'ct' or 'sc', got {sop_class!r}")
    count, rows, cols = shape
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

    def make(index: int, image: np.ndarray) -> Dataset:
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
        stored = np.clip(np.rint(image.astype(np.float64) + STORED_OFFSET), -32768, 32767)
        ds.set_pixel_data(stored.astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -STORED_OFFSET, 1, "HU"
        presets = _window_presets(center, width, hu_range=(float(stored.min()), float(stored.max())))
        ds.WindowCenter = [_ds(c) for c, _, _ in presets] if len(presets) > 1 else _ds(center)
        ds.WindowWidth = [_ds(w) for _, w, _ in presets] if len(presets) > 1 else _ds(width)
        ds.WindowCenterWidthExplanation = [name for _, _, name in presets] if len(presets) > 1 else presets[0][2]
        return ds  # dcmwrite(enforce_file_format=True) derives the file meta from it

    return make


def _window_presets(center: float, width: float, hu_range: tuple[float, float]) -> list[tuple[float, float, str]]:
    """(center, width, name) of the VOI windows a file offers: the one asked for first (a viewer opens with it),
    then ctgen's other named windows (brain, subdural, bone) when the image holds values beyond the first one's
    range, so that a viewer's window menu has the bone window of a full-range image. ``hu_range`` is the
    stored values' (min, max)."""
    first_name = next((name.upper() for name, window in WINDOWS.items() if window == (center, width)), "CTGEN")
    presets = [(float(center), float(width), first_name)]
    low, high = hu_range
    if high - low > width:  # more than the first window shows: offer the others
        presets += [(c, w, name.upper()) for name, (c, w) in WINDOWS.items() if (c, w) != (center, width)]
    return presets
