"""DICOM headers without pixels: the values that decide whether a file is a usable axial CT slice.

``read_header`` parses little-endian files (explicit or implicit VR, native or encapsulated pixel data) with
a small parser of its own that reads the top-level elements up to the pixel data and no further: many
times faster than building a pydicom Dataset, which matters for archives of a million files. Everything
else (big endian, deflate, enhanced multi-frame files whose geometry sits in functional groups, non-ASCII
patient IDs, files without the DICM preamble) is read by pydicom with ``stop_before_pixels``; a test holds
the two to the same values over pydicom's bundled files. The parser is ``ctgen.io.dicom.header_fast``, the pydicom
path ``ctgen.io.dicom.header_pydicom``; this module makes and checks the ``Header``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ctgen.io.dicom.common import one_line
from ctgen.io.dicom.header_fast import DEFLATED, FIRST_READ, NATIVE_SYNTAXES, PIXEL_VRS, parse_fast
from ctgen.io.dicom.validate import IMAGE_KEYWORDS, check_charset, check_frames, check_image, floats, rescale, spacing_mm
from ctgen.errors import DicomError
from ctgen.io.regular_file import open_regular

__all__ = ["Header", "header_from_values", "read_header"]

_LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                   "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
                   "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.201",
                   "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}


@dataclass(frozen=True)
class Header:
    """What a DICOM file says about itself, pixels unread. Text values are stripped strings ("" when absent),
    numbers are tuples of floats or None (absent, malformed or non-finite).

    ``pixels``: "native", "encapsulated" or "none" (no pixel data element); ``truncated``: the pixel data (or
    the header itself) ends before the file says it should. ``patient_id``, ``birth_date`` and ``sex`` stay in
    memory for patient keys and never leave ctgen.
    """

    path: str
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    modality: str
    image_type: tuple[str, ...]
    conversion_type: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    series_uid: str
    series_number: int | None
    series_description: str
    instance_number: int | None
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    frames: int
    pixel_spacing_mm: tuple[float, float] | None
    orientation: tuple[float, ...] | None
    position_mm: tuple[float, float, float] | None
    slice_thickness_mm: float | None
    reconstruction_diameter_mm: float | None
    gantry_tilt_deg: float | None
    kernel: str
    lossy: bool
    pixels: str
    truncated: bool
    age_years: float | None = None  # PatientAge ("045Y", "018M", ...) in years
    kvp: float | None = None
    contrast_agent: str = ""  # ContrastBolusAgent: non-empty for contrast-enhanced (CTA) series
    invalid: str = ""  # why the reader refuses the header's values (ctgen.io.dicom.validate); "" when it does not


def read_header(path: str | os.PathLike) -> Header:
    """The header of one file, read without its pixel data; a file cut short anywhere, header included,
    comes back with ``truncated`` set and whatever values came before the cut. ``invalid`` says why the
    reader would refuse the values (``ctgen.io.dicom.validate``, the checks the reader runs).

    Raises DicomError for a file that is not DICOM, not a regular file, or cannot be opened; LimitError
    (a DicomError) for sequences nested beyond MAX_SEQUENCE_DEPTH or a deflated dataset that inflates beyond
    the reader's limit. Reads at most what the elements before the pixel data need: long elements whose
    values are not wanted are seeked over.
    """
    path = Path(path)
    try:
        with open_regular(path, DicomError) as handle:  # a FIFO is refused, not waited on
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(FIRST_READ)
            if len(data) >= 132 and data[128:132] == b"DICM":
                parsed = parse_fast(data, size, handle, path)
                if parsed is not None:
                    return header_from_values(path, *parsed)
    except OSError as exc:
        raise DicomError(path, f"cannot read ({exc.strerror or exc})") from None
    from ctgen.io.dicom.header_pydicom import read_with_pydicom  # pydicom only for the files that need it

    return header_from_values(path, *read_with_pydicom(path, data, size))



def header_from_values(path: Path, values: dict, syntax: str, pixels: str, length: int,
                       truncated: bool) -> Header:
    """The ``Header`` of what ``parse_fast`` or ``read_with_pydicom`` read: (values, transfer syntax, pixels
    kind, pixel value length, truncated); ``invalid`` filled by the reader's checks."""
    def text(keyword: str) -> str:
        value = values.get(keyword)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace").rstrip("\x00 ").strip()
        return value if isinstance(value, str) else ""

    def numbers(keyword: str, count: int | None = None, *, positive: bool = False):
        return floats(values.get(keyword), count, positive=positive)

    def integer(keyword: str) -> int | None:
        value = values.get(keyword)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        first = numbers(keyword, 1)
        return int(first[0]) if first and abs(first[0]) < 2**63 else None

    rows, columns = integer("Rows") or 0, integer("Columns") or 0
    frames = integer("NumberOfFrames") or 1
    bits = integer("BitsAllocated") or 0
    samples = integer("SamplesPerPixel") or 1
    photometric = text("PhotometricInterpretation").upper()
    native = syntax in NATIVE_SYNTAXES
    if native and pixels == "native" and not truncated and rows and columns and bits and length:
        per_pixel = 2 if photometric == "YBR_FULL_422" else samples  # 4:2:2 stores two values per pixel
        expected = (rows * columns * frames * per_pixel * bits + 7) // 8
        truncated = length < expected  # a header that promises more pixels than the element holds
    invalid = "" if pixels == "none" or truncated else _invalid(path, values, syntax, pixels, length)
    thickness = numbers("SliceThickness", 1, positive=True)
    diameter = numbers("ReconstructionDiameter", 1, positive=True)
    tilt = numbers("GantryDetectorTilt", 1)
    kernel = values.get("ConvolutionKernel")
    return Header(
        path=str(path), transfer_syntax=syntax, sop_class=text("SOPClassUID"), sop_instance=text("SOPInstanceUID"),
        modality=text("Modality").upper(), image_type=tuple(p.upper() for p in values.get("ImageType") or ()),
        conversion_type=text("ConversionType").upper(), patient_id=text("PatientID"),
        birth_date=text("PatientBirthDate"), sex=text("PatientSex").upper(), study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"), series_number=integer("SeriesNumber"),
        series_description=text("SeriesDescription"), instance_number=integer("InstanceNumber"),
        rows=rows, columns=columns, samples_per_pixel=samples, photometric=photometric,
        bits_allocated=bits, frames=max(1, frames),
        pixel_spacing_mm=numbers("PixelSpacing", 2, positive=True), orientation=numbers("ImageOrientationPatient", 6),
        position_mm=numbers("ImagePositionPatient", 3), slice_thickness_mm=thickness[0] if thickness else None,
        reconstruction_diameter_mm=diameter[0] if diameter else None, gantry_tilt_deg=tilt[0] if tilt else None,
        kernel="\\".join(kernel) if isinstance(kernel, tuple) else "",
        lossy=text("LossyImageCompression") == "01" or syntax in _LOSSY_SYNTAXES,
        pixels=pixels, truncated=truncated, age_years=_age_years(text("PatientAge")),
        kvp=(numbers("KVP", 1, positive=True) or (None,))[0], contrast_agent=text("ContrastBolusAgent"),
        invalid=invalid)


def _invalid(path: Path, values: dict, syntax: str, pixels: str, length: int) -> str:
    """Why the reader would refuse the header's values ("" when it would not): ``ctgen.io.dicom.validate``."""
    image = {keyword: values[keyword] for keyword in IMAGE_KEYWORDS if keyword in values}
    tag, vr = values.get("_pixel_vr") or (None, None)
    # UN ("unknown", as some converters store it) is read as the element's own VR, by pydicom and so by the reader
    if vr is not None and vr != b"UN" and vr not in PIXEL_VRS.get(tag, (vr,)):
        allowed = " or ".join(kind.decode() for kind in PIXEL_VRS[tag])
        return f"pixel data stored with VR {vr.decode('ascii', 'replace')}, not {allowed}"
    try:
        check_charset(path, values.get("SpecificCharacterSet"))
        frames = check_image(path, image, pixel_bytes=None if syntax == DEFLATED else length,
                             compressed=pixels == "encapsulated")
        if "_frames" in values:
            check_frames(path, values["_frames"], frames)
        else:
            if not values.get("ModalityLUTSequence") and "RescaleIntercept" in values:
                rescale(path, values.get("RescaleSlope"), values["RescaleIntercept"], image["BitsAllocated"])
            spacing_mm(path, values.get("PixelSpacing"))
    except DicomError as error:
        return error.reason
    except Exception as error:  # noqa: BLE001 - values pydicom cannot convert: the reader cannot either
        return f"cannot read: {one_line(error)}"
    return ""


def _age_years(text: str) -> float | None:
    """A DICOM age string (nnnD, nnnW, nnnM or nnnY) in years; None when absent or malformed."""
    units = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
    if len(text) != 4 or not text[:3].isdigit() or text[3].upper() not in units:
        return None
    return int(text[:3]) * units[text[3].upper()]
