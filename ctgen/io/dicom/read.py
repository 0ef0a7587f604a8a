"""Reading CT slices as Hounsfield units.

Reading decodes what pydicom's plugins decode (gdcm: JPEG and JPEG-LS; openjpeg: JPEG 2000; rle;
deflate and big endian natively) and raises every failure as DicomError. Header values are checked
before they are used: the decoded size against a limit (``ctgen.io.dicom.limits``) and the codestream's
own size before any decoder runs, the pixel spacing against a plausible range, the rescale for finite
HU. Decoders run inside one boundary: their exceptions, warnings and stderr output become one DicomError.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.encaps import generate_frames, get_frame
from pydicom.filereader import read_file_meta_info
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGExtended12Bit,
)

from ctgen.io.dicom.common import CT_SOP as _CT_SOP
from ctgen.io.dicom.common import MODALITY_BY_SOP
from ctgen.io.dicom.common import one_line as _one_line
from ctgen.io.dicom.limits import bounded_reader, check_codestream, check_deflated_file, check_pixel_count
from ctgen.io.dicom.validate import (
    IMAGE_KEYWORDS, attr, check_charset, check_depth, check_image, dataset_depth, floats, functional_groups,
    nesting_error, rescale, spacing_mm, value,
)
from ctgen.errors import CtgenError, DicomError
from ctgen.runtime.native_stderr import captured_native_stderr

__all__ = ["Slice", "read_slice", "read_frames", "read_series", "iter_dicom_files", "AIR_HU"]

from ctgen.defaults import AIR_HU  # noqa: E402 - what PixelPaddingValue pixels of a CT become
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)
_NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# warnings.catch_warnings (how _guard silences pydicom) swaps process-wide state and is not thread-safe:
# one reader at a time, whichever thread reads
_READ_LOCK = threading.RLock()
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
def read_slice(path, *, allow_mr: bool = False, frame: int | None = None, max_pixels: int | None = None) -> Slice:
    """Read one frame (default 0) of a CT file as HU.

    Rescale slope/intercept or a modality LUT is applied, from the frame's or the shared functional
    group first in enhanced multi-frame files. MONOCHROME1 needs no inversion: the standard applies
    it after the modality LUT, for display only, so rescaled values are HU either way. Pixels equal
    to PixelPaddingValue (or within PixelPaddingRangeLimit) become AIR_HU (0 for MR).
    Raises DicomError: not DICOM, truncated, no pixel data, colour, not CT (MR needs allow_mr=True),
    frame out of range, pixel data that cannot be decoded, more than ``max_pixels`` pixels to decode
    (None: ``ctgen.io.dicom.max_pixels()``, set by ``set_max_pixels`` or CTGEN_MAX_PIXELS), a codestream
    whose size differs from the header's, a pixel spacing outside SPACING_RANGE_MM (0.05 to 20 mm),
    or a rescale that is zero or does not give finite HU.
    """
    with _guard(path, allow_mr, max_pixels) as (ds, modality, n_frames):
        index = 0 if frame is None else frame
        if not 0 <= index < n_frames:
            raise DicomError(path, f"frame {index} out of range (the file has {n_frames})")
        stored = _decode(ds, path, index if n_frames > 1 else None, n_frames, max_pixels)[0]
        return _slice(ds, path, modality, index, stored)


def read_frames(path, *, allow_mr: bool = False, max_pixels: int | None = None) -> list[Slice]:
    """Read every frame of a file (one Slice for a single-frame file). Raises DicomError as ``read_slice``;
    the pixel limit counts every frame."""
    with _guard(path, allow_mr, max_pixels) as (ds, modality, n_frames):
        stored = _decode(ds, path, None, n_frames, max_pixels)
        if len(stored) != n_frames:
            raise DicomError(path, f"decoded {len(stored)} frames, the header says {n_frames}")
        return [_slice(ds, path, modality, i, stored[i]) for i in range(n_frames)]


def read_series(source, *, allow_mr: bool = False, max_pixels: int | None = None) -> list[Slice]:
    """Read every frame of a folder (recursively), a file or a list of paths.

    Slices are grouped by SeriesInstanceUID (in order of first appearance) and sorted along the
    slice normal (ImagePositionPatient . normal); where a slice lacks geometry, by InstanceNumber.
    Raises DicomError for the first unreadable file, or when there are no files.
    """
    groups: dict[str, list[Slice]] = {}
    for file in iter_dicom_files(source):
        for one in read_frames(file, allow_mr=allow_mr, max_pixels=max_pixels):
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
def _guard(path, allow_mr: bool, max_pixels: int | None):
    # pydicom warns instead of raising on damaged files: record (silence) warnings, convert errors;
    # numpy's floating-point warnings are recorded too
    with _READ_LOCK, warnings.catch_warnings(record=True) as caught, np.errstate(all="warn"):
        warnings.simplefilter("always")
        try:
            ds = _open(Path(path), max_pixels)
            truncated = any("End of file" in str(w.message) for w in caught)
            yield (ds, *_check(ds, path, allow_mr, truncated, max_pixels))
        except (CtgenError, *_FATAL):
            raise
        except RecursionError:
            raise nesting_error(path) from None
        except BaseException as exc:  # anything at all from damaged files, Rust panics included
            raise DicomError(path, f"cannot read: {_one_line(exc)}") from exc


def _open(path: Path, max_pixels: int | None) -> Dataset:
    if not path.is_file():
        raise DicomError(path, "no such file" if not path.exists() else "not a file")
    with open(path, "rb") as stream:
        check_deflated_file(path, stream.read(4096), max_pixels)
    try:
        with bounded_reader(path) as stream:
            return pydicom.dcmread(stream)
    except InvalidDicomError:
        pass
    try:  # headerless datasets (no preamble, no file meta) still turn up in old archives
        with bounded_reader(path) as stream:
            ds = pydicom.dcmread(stream, force=True)
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


def _raw(ds: Dataset, keyword: str):
    """A header value for ``check_image``: pydicom's, or the bytes as stored when pydicom cannot convert them."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - IS "inf" and friends: check_image refuses the text
        return ds.get_item(keyword).value


def _check(ds: Dataset, path, allow_mr: bool, truncated: bool, max_pixels: int | None) -> tuple[str, int]:
    if "PixelData" not in ds:
        raise DicomError(path, "file is truncated" if truncated else "no pixel data (not an image)")
    check_charset(path, _raw(ds, "SpecificCharacterSet"))
    stored = ds.get_item("PixelData", keep_deferred=True)  # before conversion: the length the file declares
    declared = getattr(stored, "length", None)
    native = not ds.file_meta.TransferSyntaxUID.is_encapsulated
    if declared is not None and (len(stored.value or b"") < declared if declared != 0xFFFFFFFF else native):
        # pydicom reads a cut value as it is (it may even decode), and native data of undefined length up to
        # the end of the file: neither is what the file declares (scan says "truncated" too)
        raise DicomError(path, "file is truncated (it ends before its pixel data does)")
    if not ds.PixelData:
        raise DicomError(path, "pixel data is empty")
    modality = str(ds.get("Modality") or MODALITY_BY_SOP.get(str(ds.get("SOPClassUID")), "")).strip().upper()
    if modality not in (("CT", "MR") if allow_mr else ("CT",)):
        hint = " (pass allow_mr=True to read MR)" if modality == "MR" else ""
        raise DicomError(path, f"modality {modality or 'unknown'} is not CT{hint}")
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = "MONOCHROME2"  # ACR-NEMA style files omit it
    if value(ds, "SamplesPerPixel") in (None, ""):
        ds.SamplesPerPixel = 1  # absent or empty: pydicom's decoders need it (scan takes it as 1 too)
    n_frames = check_image(path, {keyword: _raw(ds, keyword) for keyword in IMAGE_KEYWORDS},
                           pixel_bytes=len(ds.PixelData), compressed=ds.file_meta.TransferSyntaxUID.is_encapsulated,
                           max_pixels=max_pixels)
    check_depth(path, dataset_depth(ds))
    return modality, n_frames


def _decode(ds: Dataset, path, index: int | None, n_frames: int, max_pixels: int | None) -> np.ndarray:
    """Stored values (frames, H, W), signedness fixed by pydicom, nothing rescaled.

    ``index``: one frame of a multi-frame file, or None for all frames. Sizes are checked before any
    decoder runs; compressed data is decoded with descriptor 2 captured (decoders print their errors).
    """
    syntax = ds.file_meta.TransferSyntaxUID
    rows, columns = int(ds.Rows), int(ds.Columns)
    check_pixel_count(path, rows, columns, 1 if index is not None else n_frames, max_pixels)
    try:
        stored = _native_16bit(ds, index)
        if stored is None and not syntax.is_encapsulated:
            stored = pixel_array(ds, index=index)
        elif stored is None:
            check_codestream(path, syntax, _frames(ds, index, n_frames), rows, columns,
                             int(ds.get("SamplesPerPixel") or 1), int(ds.BitsAllocated), _bits_stored(ds))
            with captured_native_stderr():
                stored = pixel_array(ds, index=index)
    except (CtgenError, *_FATAL):
        raise
    except BaseException as exc:  # pyo3's PanicException is not an Exception
        needs_gpl = (syntax == JPEGExtended12Bit and int(ds.get("BitsStored") or 8) > 8
                     and "pylibjpeg" not in get_decoder(syntax).available_plugins)
        raise DicomError(path, _JPEG_GPL if needs_gpl else
                         f"cannot decode {syntax.name} pixel data: {_one_line(exc)}") from exc
    return stored.reshape(-1, rows, columns)


def _bits_stored(ds: Dataset) -> int:
    return int(ds.get("BitsStored") or ds.BitsAllocated)


def _frames(ds: Dataset, index: int | None, n_frames: int):
    """The encapsulated frames that ``pixel_array(ds, index=index)`` will decode, as bytes."""
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    if index is None and n_frames > 1:
        return generate_frames(ds.PixelData, number_of_frames=n_frames, extended_offsets=extended)
    return [get_frame(ds.PixelData, index or 0, number_of_frames=n_frames, extended_offsets=extended)]


def _native_16bit(ds: Dataset, index: int | None) -> np.ndarray | None:
    """Little-endian native 16-bit pixel data straight from its bytes, decoded as pydicom decodes it.

    The common CT case, at a fraction of pydicom's cost per file. Bits above BitsStored are
    cleared (unsigned) or sign-extended from the stored high bit (signed). Returns None for any other
    encoding; the caller then asks pydicom.
    """
    if ds.file_meta.TransferSyntaxUID not in _NATIVE_LE or ds.get("BitsAllocated") != 16:
        return None
    rows, cols, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1)
    bits, signed = int(ds.get("BitsStored") or 16), ds.get("PixelRepresentation") == 1
    data = ds.PixelData
    if not 1 <= bits <= 16 or not isinstance(data, bytes) or len(data) < rows * cols * frames * 2:
        return None
    stored = np.frombuffer(data, "<i2" if signed else "<u2", count=rows * cols * frames).reshape(frames, rows, cols)
    if index is not None:
        stored = stored[index : index + 1]
    if bits < 16 and signed:
        stored = (stored << np.int16(16 - bits)) >> np.int16(16 - bits)  # sign-extend from the high bit
    elif bits < 16:
        stored = stored & np.uint16((1 << bits) - 1)
    return stored


def _slice(ds: Dataset, path, modality: str, frame: int, stored: np.ndarray) -> Slice:
    groups = functional_groups(ds, frame)
    transform = attr(ds, groups, "PixelValueTransformationSequence")
    source = transform if transform is not None and "RescaleIntercept" in transform else ds
    if "ModalityLUTSequence" in source:
        hu = np.array(apply_modality_lut(stored, source), dtype=np.float32)
    else:  # the linear rescale, in float32 and in place (pydicom would ignore functional groups,
        # skip a rescale without slope, and go through float64)
        hu = stored.astype(np.float32)
        slope, intercept = 1.0, 0.0
        if "RescaleIntercept" in source:
            slope, intercept = rescale(path, value(source, "RescaleSlope"), value(source, "RescaleIntercept"),
                                       int(ds.BitsAllocated))
        if slope != 1.0:
            hu *= np.float32(slope)
        if intercept != 0.0:
            hu += np.float32(intercept)
    padding, limit = value(ds, "PixelPaddingValue"), value(ds, "PixelPaddingRangeLimit")
    if isinstance(padding, int):  # anything else (absent, malformed) pads nothing
        lo = hi = _stored_value(ds, padding)
        if isinstance(limit, int):
            lo, hi = sorted((lo, _stored_value(ds, limit)))
        hu[(stored >= lo) & (stored <= hi)] = AIR_HU if modality == "CT" else 0.0
    thickness = floats(attr(ds, groups, "PixelMeasuresSequence", "SliceThickness"), 1, positive=True)
    center = floats(attr(ds, groups, "FrameVOILUTSequence", "WindowCenter"))
    width = floats(attr(ds, groups, "FrameVOILUTSequence", "WindowWidth"), positive=True)
    number = floats(value(ds, "InstanceNumber"), 1)
    return Slice(
        hu=hu, spacing_mm=spacing_mm(path, attr(ds, groups, "PixelMeasuresSequence", "PixelSpacing")),
        path=str(path), modality=modality, patient_id=str(value(ds, "PatientID") or ""),
        series_uid=str(value(ds, "SeriesInstanceUID") or ""),
        position_mm=floats(attr(ds, groups, "PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=floats(attr(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        instance_number=int(number[0]) if number else None,
        slice_thickness_mm=thickness[0] if thickness else None,
        window=(center[0], width[0]) if center and width else None)






def _stored_value(ds: Dataset, number: int) -> int:
    # US or SS by PixelRepresentation: some writers store a signed padding value as US
    bits = int(ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    return number - (1 << bits) if signed and number >= 1 << (bits - 1) else number



def _sorted_along_normal(group: list[Slice]) -> list[Slice]:
    orientation = next((s.orientation for s in group if s.orientation), None)
    if orientation is not None and all(s.position_mm is not None for s in group):
        normal = np.cross(orientation[:3], orientation[3:])
        return sorted(group, key=lambda s: (float(np.dot(s.position_mm, normal)), s.instance_number or 0))
    return sorted(group, key=lambda s: (s.instance_number is None, s.instance_number or 0))
