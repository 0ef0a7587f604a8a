"""DICOM headers without pixels: the values that decide whether a file is a usable axial CT slice.

``read_header`` parses little-endian files (explicit or implicit VR, native or encapsulated pixel data) with
a small parser of its own that reads the top-level elements up to the pixel data and no further: many
times faster than building a pydicom Dataset, which matters for archives of a million files. Everything
else (big endian, deflate, enhanced multi-frame files whose geometry sits in functional groups, non-ASCII
patient IDs, files without the DICM preamble) is read by pydicom with ``stop_before_pixels``; a test holds
the two to the same values over pydicom's bundled files.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from ctgen.dicom.common import one_line
from ctgen.dicom.limits import bounded_reader, check_deflated_file
from ctgen.dicom.validate import (
    IMAGE_KEYWORDS, check_charset, check_depth, check_frames, check_image, dataset_depth, floats, nesting_error,
    rescale, spacing_mm,
)
from ctgen.errors import DicomError
from ctgen.regular_file import open_regular

__all__ = ["Header", "read_header"]

_FIRST_READ = 64 * 1024  # the whole header of nearly every file; more is read only when a header is longer
_MAX_VALUE = 64 * 1024  # a wanted value longer than this is malformed: it is skipped, not read
_OVERLONG = "\x00overlong"  # what such a value becomes: text that no check accepts
_MODALITY_LUT = 0x00283000
_INTEGER_VRS = {None: "<H", b"US": "<H", b"SS": "<h", b"UL": "<I", b"SL": "<i"}  # None: implicit, or UN
_UNDEFINED = 0xFFFFFFFF
_VRS = {vr.encode() for vr in ("AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                                "UC UI UL UN UR US UT UV").split()}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, FloatPixelData, DoubleFloatPixelData
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_EXPLICIT_LE, _IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_BIG_ENDIAN, _DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_NATIVE = (_EXPLICIT_LE, _IMPLICIT_LE, _BIG_ENDIAN)
_LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                   "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
                   "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.201",
                   "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}

# tag -> (keyword, kind): the top-level values the header keeps. Kinds: text (one string), texts (backslash
# separated), number (DS/IS, floats), ushort (US)
_WANTED = {
    0x00080005: ("SpecificCharacterSet", "texts"),
    0x00080008: ("ImageType", "texts"),
    0x00080016: ("SOPClassUID", "text"),
    0x00080018: ("SOPInstanceUID", "text"),
    0x00080060: ("Modality", "text"),
    0x00080064: ("ConversionType", "text"),
    0x0008103E: ("SeriesDescription", "text"),
    0x00100020: ("PatientID", "text"),
    0x00100030: ("PatientBirthDate", "text"),
    0x00100040: ("PatientSex", "text"),
    0x00101010: ("PatientAge", "text"),
    0x00180010: ("ContrastBolusAgent", "text"),
    0x00180050: ("SliceThickness", "number"),
    0x00180060: ("KVP", "number"),
    0x00181100: ("ReconstructionDiameter", "number"),
    0x00181120: ("GantryDetectorTilt", "number"),
    0x00181210: ("ConvolutionKernel", "texts"),
    0x0020000D: ("StudyInstanceUID", "text"),
    0x0020000E: ("SeriesInstanceUID", "text"),
    0x00200011: ("SeriesNumber", "number"),
    0x00200013: ("InstanceNumber", "number"),
    0x00200032: ("ImagePositionPatient", "number"),
    0x00200037: ("ImageOrientationPatient", "number"),
    0x00280002: ("SamplesPerPixel", "ushort"),
    0x00280004: ("PhotometricInterpretation", "text"),
    0x00280008: ("NumberOfFrames", "number"),
    0x00280010: ("Rows", "ushort"),
    0x00280011: ("Columns", "ushort"),
    0x00280030: ("PixelSpacing", "number"),
    0x00280100: ("BitsAllocated", "ushort"),
    0x00280101: ("BitsStored", "ushort"),
    0x00281052: ("RescaleIntercept", "number"),
    0x00281053: ("RescaleSlope", "number"),
    0x00282110: ("LossyImageCompression", "text"),
}
_FUNCTIONAL_GROUPS = {0x52009229, 0x52009230}  # enhanced multi-frame geometry: pydicom reads those files


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
    invalid: str = ""  # why the reader refuses the header's values (ctgen.dicom.validate); "" when it does not


def read_header(path: str | os.PathLike) -> Header:
    """The header of one file, read without its pixel data; a file cut short anywhere, header included,
    comes back with ``truncated`` set and whatever values came before the cut. ``invalid`` says why the
    reader would refuse the values (``ctgen.dicom.validate``, the checks the reader runs).

    Raises DicomError for a file that is not DICOM, not a regular file, or cannot be opened; LimitError
    (a DicomError) for sequences nested beyond MAX_SEQUENCE_DEPTH or a deflated dataset that inflates beyond
    the reader's limit. Reads at most what the elements before the pixel data need: long elements whose
    values are not wanted are seeked over.
    """
    path = Path(path)
    try:
        with open_regular(path, DicomError) as handle:  # a FIFO is refused, not waited on
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(_FIRST_READ)
            if len(data) >= 132 and data[128:132] == b"DICM":
                parsed = _parse_fast(data, size, handle, path)
                if parsed is not None:
                    return _header(path, *parsed)
    except OSError as exc:
        raise DicomError(path, f"cannot read ({exc.strerror or exc})") from None
    return _read_with_pydicom(path, data, size)


# ------------------------------------------------------------------------------------------ fast path
class _Truncated(Exception):
    pass


class _Fallback(Exception):
    pass


class _Buffer:
    """A window on the file: ``data`` holds its bytes from ``base`` on. Offsets handed around are offsets into
    ``data``; skipping past its end moves the window without reading what is skipped."""

    __slots__ = ("data", "base", "handle", "size")

    def __init__(self, data: bytes, handle, size: int):
        self.data, self.base, self.handle, self.size = data, 0, handle, size

    def need(self, offset: int, count: int) -> int:
        """Make ``data[offset : offset + count]`` present; returns the offset, which may have moved.
        Raises _Truncated when the file ends before."""
        if offset + count <= len(self.data):
            return offset
        position = self.base + offset
        if position + count > self.size:
            raise _Truncated
        kept = self.data[offset:]
        self.handle.seek(self.base + len(self.data))
        wanted = min(max(count - len(kept), _FIRST_READ), self.size - self.base - len(self.data))
        self.data, self.base = kept + self.handle.read(wanted), position
        if count > len(self.data):
            raise _Truncated
        return 0

    def skip(self, offset: int) -> int:
        """The offset of file position ``base + offset``, reading nothing before it; _Truncated past the end."""
        if offset <= len(self.data):
            return offset
        position = self.base + offset
        if position > self.size:
            raise _Truncated
        self.data, self.base = b"", position
        return 0

    def at_end(self, offset: int) -> bool:
        return self.base + offset >= self.size


def _parse_fast(data: bytes, size: int, handle, path=None) -> tuple[dict, str, str, int, bool] | None:
    """(values, transfer syntax, pixels kind, pixel value length, truncated) or None (pydicom's case)."""
    values: dict = {}
    meta: dict = {}
    syntax = ""
    buffer = _Buffer(data, handle, size)
    try:
        meta, offset = _parse_meta(buffer, meta)
        syntax = meta.get("TransferSyntaxUID", "")
        if syntax == _IMPLICIT_LE:
            explicit = False
        elif syntax and syntax not in (_BIG_ENDIAN, _DEFLATED):
            explicit = True  # explicit VR little endian, and every encapsulated syntax
        else:
            return None
        found = _walk_top_level(buffer, offset, explicit, values, path)
    except _Fallback:
        return None
    except _Truncated:  # what was read before the cut still describes the file
        found, values["_cut"] = None, True
    values.setdefault("SOPInstanceUID", meta.get("MediaStorageSOPInstanceUID", ""))
    values.setdefault("SOPClassUID", meta.get("MediaStorageSOPClassUID", ""))
    patient_id = values.get("PatientID", b"")
    if isinstance(patient_id, bytes) and not patient_id.isascii():
        return None  # pydicom decodes it by the character set, so that patient keys match the reader's
    if found is None:
        return values, syntax, "none", 0, bool(values.pop("_cut", False))
    value_offset, length = found
    if length == _UNDEFINED and syntax in _NATIVE:  # pydicom reads to a delimiter that native data lacks
        return values, syntax, "native", 0, True
    if length == _UNDEFINED:
        return values, syntax, "encapsulated", length, _fragments_cut(handle, value_offset, size, "<")
    return values, syntax, "native", length, value_offset + length > size


def _fragments_cut(handle, offset: int, size: int, endian: str) -> bool:
    """Whether encapsulated pixel data starting at ``offset`` (its first item) runs past the end of the file:
    follows the items (basic offset table, fragments) to the sequence delimiter, reading 8 bytes per item."""
    item = struct.Struct(endian + "HHI")
    while True:
        handle.seek(offset)
        raw = handle.read(8)
        if len(raw) < 8:
            return True
        group, element, length = item.unpack(raw)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return False
        if tag != _ITEM or length == _UNDEFINED:
            return False  # malformed rather than cut: decoding will say what is wrong
        offset += 8 + length
        if offset > size:
            return True


def _element(buffer: _Buffer, offset: int, explicit: bool) -> tuple[int, int, bytes | None, int, int]:
    """(offset, tag, VR or None, value length, value offset) of the data element at ``offset`` (which may
    move); _Fallback for a VR this parser does not know, _Truncated when the file ends inside its header."""
    offset = buffer.need(offset, 8)
    data = buffer.data
    group, element = struct.unpack_from("<HH", data, offset)
    tag = group << 16 | element
    if not explicit:
        return offset, tag, None, struct.unpack_from("<I", data, offset + 4)[0], offset + 8
    vr = data[offset + 4 : offset + 6]
    if vr not in _VRS:
        raise _Fallback  # implicit VR under an explicit transfer syntax, and other oddities
    if vr in _LONG_VRS:
        offset = buffer.need(offset, 12)
        return offset, tag, vr, struct.unpack_from("<I", buffer.data, offset + 8)[0], offset + 12
    return offset, tag, vr, struct.unpack_from("<H", data, offset + 6)[0], offset + 8


def _parse_meta(buffer: _Buffer, meta: dict) -> tuple[dict, int]:
    offset, end = 132, None  # end: where the group ends, as a file position
    while True:
        offset = buffer.need(offset, 8)
        group, element = struct.unpack_from("<HH", buffer.data, offset)
        if group != 2 or (end is not None and buffer.base + offset >= end):
            return meta, offset
        offset, _, vr, length, start = _element(buffer, offset, True)
        if length == _UNDEFINED:
            raise _Fallback
        if element in (0x0000, 0x0002, 0x0003, 0x0010) and length <= _MAX_VALUE:
            start = buffer.need(start, length)
            value = buffer.data[start : start + length]
            if element == 0x0000 and length == 4:
                end = buffer.base + start + length + struct.unpack("<I", value)[0]
            elif element != 0x0000:
                key = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
                       0x0010: "TransferSyntaxUID"}[element]
                meta[key] = value.rstrip(b"\x00 ").decode("ascii", "replace").strip()
        offset = buffer.skip(start + length)


def _walk_top_level(buffer: _Buffer, offset: int, explicit: bool, values: dict, path):
    """Collect the wanted values until the pixel data; returns (value position in the file, length) or None.

    The loop every file runs, element by element: ``_element``'s decoding is written out here and the buffer
    is only moved when short (a function call per element costs a fifth of the scan's speed)."""
    wanted, unpack = _WANTED, struct.unpack_from
    data = buffer.data
    while True:
        if offset + 12 > len(data):
            if buffer.at_end(offset):
                return None  # a clean end: no pixel data
            offset, tag, vr, length, start = _element(buffer, offset, explicit)
            data = buffer.data
        else:
            group, element = unpack("<HH", data, offset)
            tag = group << 16 | element
            if explicit:
                vr = data[offset + 4 : offset + 6]
                if vr not in _VRS:
                    raise _Fallback  # implicit VR under an explicit transfer syntax, and other oddities
                if vr in _LONG_VRS:
                    (length,) = unpack("<I", data, offset + 8)
                    start = offset + 12
                else:
                    (length,) = unpack("<H", data, offset + 6)
                    start = offset + 8
            else:
                vr = None
                (length,) = unpack("<I", data, offset + 4)
                start = offset + 8
        if tag in _PIXEL_TAGS:
            return buffer.base + start, length
        if tag in _FUNCTIONAL_GROUPS:
            raise _Fallback
        if length == _UNDEFINED or vr == b"SQ":  # a sequence (SQ, or UN holding implicit-VR items)
            if tag == _MODALITY_LUT:
                values["ModalityLUTSequence"] = True
            end = None if length == _UNDEFINED else buffer.base + start + length
            offset = _skip_sequence(buffer, start, end, explicit and vr != b"UN", 1, path)
            data = buffer.data
            continue
        end = start + length
        entry = wanted.get(tag)
        if entry is not None and length <= _MAX_VALUE:
            if end > len(data):
                start = buffer.need(start, length)
                data, end = buffer.data, start + length
            values[entry[0]] = _value(data[start:end], entry[1], vr)
        else:
            if entry is not None:
                values[entry[0]] = _OVERLONG
            if end > len(data):
                end = buffer.skip(end)
                data = buffer.data
        offset = end


def _skip_sequence(buffer: _Buffer, offset: int, end: int | None, explicit: bool, depth: int, path) -> int:
    """Skip a sequence's items from its first (``end``: the file position after a defined-length sequence,
    None for an undefined length); returns the offset after it. LimitError beyond MAX_SEQUENCE_DEPTH."""
    check_depth(path, depth)
    while True:
        if end is not None and buffer.base + offset >= end:
            return offset
        offset = buffer.need(offset, 8)
        group, element, length = struct.unpack_from("<HHI", buffer.data, offset)
        tag = group << 16 | element
        offset += 8
        if tag == _SEQUENCE_END and end is None:
            return offset
        if tag != _ITEM:
            raise _Fallback  # not what a sequence holds: let pydicom judge
        if length == _UNDEFINED:
            offset = _skip_item(buffer, offset, None, explicit, depth, path)
        else:
            offset = _skip_item(buffer, offset, buffer.base + offset + length, explicit, depth, path)


def _skip_item(buffer: _Buffer, offset: int, end: int | None, explicit: bool, depth: int, path) -> int:
    """Skip the elements of an item up to its end (``end``, a file position) or its delimiter (None)."""
    while True:
        if end is not None and buffer.base + offset >= end:
            return offset
        offset = buffer.need(offset, 8)
        group, element = struct.unpack_from("<HH", buffer.data, offset)
        if end is None and group << 16 | element == _ITEM_END:  # delimiters carry no VR
            return offset + 8
        offset, _, vr, length, start = _element(buffer, offset, explicit)
        if length == _UNDEFINED:
            offset = _skip_sequence(buffer, start, None, explicit and vr != b"UN", depth + 1, path)
        elif vr == b"SQ" and length:
            offset = _skip_sequence(buffer, start, buffer.base + start + length, explicit, depth + 1, path)
        else:
            offset = buffer.skip(start + length)


_TEXT_VRS = {vr.encode() for vr in "AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split()}


def _value(raw: bytes, kind: str, vr: bytes | None = None):
    if kind == "texts" and vr is not None and vr != b"UN" and vr not in _TEXT_VRS:
        return (raw,)  # pydicom converts by the VR the element says: a number or bytes, not text
    if kind == "ushort":  # one value of the VR the element says (pydicom converts by it), else malformed
        code = _INTEGER_VRS.get(vr if vr != b"UN" else None)
        if code is None or len(raw) != struct.calcsize(code):
            return raw.decode("latin-1") or ""
        return struct.unpack(code, raw)[0]
    if kind == "text" and not raw.isascii():
        return raw  # decoded (or refused) later
    if kind == "number":  # as stored: ctgen.dicom.validate.numbers strips it as it strips pydicom's bytes
        return raw.decode("ascii", "replace")
    text = raw.decode("ascii", "replace").rstrip("\x00 ").strip()
    if kind == "texts":
        return tuple(part.strip() for part in text.split("\\"))
    return text  # "text"; "number" is parsed where it is used (ctgen.dicom.validate.numbers)


# ------------------------------------------------------------------------------------------ pydicom path
def _read_with_pydicom(path: Path, start: bytes, size: int) -> Header:
    import pydicom
    from pydicom.errors import InvalidDicomError

    preamble = len(start) >= 132 and start[128:132] == b"DICM"
    # A headerless dataset starts with a group 0002 or 0008 element; anything else is not DICOM, and is not
    # handed to pydicom's forced parsing, which would read any bytes as some dataset.
    if not preamble and start[:2] not in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
        raise DicomError(path, "not a DICOM file")
    check_deflated_file(path, start[:4096], None)  # pydicom inflates a deflated dataset whole
    with warnings.catch_warnings(record=True) as caught, bounded_reader(path, in_memory=False) as handle:
        warnings.simplefilter("always")
        try:
            # long values are deferred: seeked over, and read only if a wanted value is that long
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=not preamble, defer_size=_MAX_VALUE)
            position = handle.tell()
            check_depth(path, dataset_depth(ds))
        except InvalidDicomError:
            raise DicomError(path, "not a DICOM file") from None
        except RecursionError:
            raise nesting_error(path) from None
        except DicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a damaged header is one reason
            if preamble and (isinstance(exc, (EOFError, struct.error)) or "end of file" in str(exc).lower()):
                return _header(path, {}, "", "none", 0, True)
            raise DicomError(path, "not a DICOM file") from None
        if not preamble and not (("Rows" in ds and "Columns" in ds) or "SOPClassUID" in ds or "Modality" in ds):
            raise DicomError(path, "not a DICOM file")
        header_cut = any("end of file" in str(w.message).lower() for w in caught)
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if not syntax:
            implicit, little = ds.original_encoding
            syntax = _IMPLICIT_LE if implicit else (_EXPLICIT_LE if little else _BIG_ENDIAN)
        pixels, length, truncated = "none", 0, header_cut
        if syntax == _DEFLATED:  # positions in an inflated stream say nothing about the file
            pixels, length = _deflated_pixels(path)
        elif not header_cut:
            handle.seek(position)
            element = handle.read(12)
            little = syntax != _BIG_ENDIAN
            if len(element) >= 8:
                group, number = struct.unpack("<HH" if little else ">HH", element[:4])
                if (group << 16 | number) in _PIXEL_TAGS:
                    if element[4:6] in _LONG_VRS:  # the element itself says how it is encoded
                        length = struct.unpack("<I" if little else ">I", element[8:12])[0]
                        value_offset = position + 12
                    else:
                        length = struct.unpack("<I" if little else ">I", element[4:8])[0]
                        value_offset = position + 8
                    if length == _UNDEFINED and syntax in _NATIVE:  # as in _parse_fast
                        pixels, truncated = "native", True
                    elif length == _UNDEFINED:
                        pixels = "encapsulated"
                        truncated = _fragments_cut(handle, value_offset, size, "<" if little else ">")
                    else:
                        pixels, truncated = "native", value_offset + length > size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom converts values now, and warns about malformed ones
        values = {keyword: _pydicom_value(ds, keyword, kind) for keyword, kind in _WANTED.values() if keyword in ds}
        try:
            values.update(_enhanced_geometry(ds))
        except Exception:  # noqa: BLE001 - damaged functional groups: check_frames says why
            pass
        values["ModalityLUTSequence"] = "ModalityLUTSequence" in ds
        if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
            values["_frames"] = ds  # spacing and rescale per frame, as the reader resolves them
        meta = getattr(ds, "file_meta", None)
        for keyword, stored in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not values.get(keyword) and meta is not None:
                values[keyword] = _pydicom_value(meta, stored, "text") or ""
        return _header(path, values, syntax, pixels, length, truncated)


def _deflated_pixels(path: Path) -> tuple[str, int]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=256)
    except Exception:  # noqa: BLE001
        return "none", 0
    if "PixelData" not in ds:
        return "none", 0
    return "native", 0


def _pydicom_value(ds, keyword: str, kind: str):
    """A value as the fast path gives it: ushort an int (else what pydicom holds: malformed), number as
    pydicom holds it (parsed by ``ctgen.dicom.validate.numbers``), texts a tuple, text a string."""
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom cannot convert what is stored (IS "inf", a cut US value)
        return "\x00malformed"
    if value is None:
        return "" if kind in ("ushort", "number") else None
    if kind == "ushort":
        return value if isinstance(value, int) else ("" if value == "" else repr(value))
    if kind == "number":
        return value
    if kind == "texts":
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        return tuple(str(item).strip() for item in items)
    return str(value).strip()


def _enhanced_geometry(ds) -> dict:
    """Orientation, spacing and thickness of an enhanced multi-frame file from its shared (else first
    per-frame) functional group; {} for other files."""
    found: dict = {}
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(name)
        if not groups:
            continue
        group = groups[0]
        for sequence, keyword, target in (("PlaneOrientationSequence", "ImageOrientationPatient",
                                           "ImageOrientationPatient"),
                                          ("PixelMeasuresSequence", "PixelSpacing", "PixelSpacing"),
                                          ("PixelMeasuresSequence", "SliceThickness", "SliceThickness"),
                                          ("PlanePositionSequence", "ImagePositionPatient", "ImagePositionPatient")):
            items = group.get(sequence)
            if items and items[0].get(keyword) is not None and target not in found:
                found[target] = _pydicom_value(items[0], keyword, "number")
    return found


# ------------------------------------------------------------------------------------------ the Header
def _header(path: Path, values: dict, syntax: str, pixels: str, length: int, truncated: bool) -> Header:
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
    native = syntax in _NATIVE
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
    """Why the reader would refuse the header's values ("" when it would not): ``ctgen.dicom.validate``."""
    image = {keyword: values[keyword] for keyword in IMAGE_KEYWORDS if keyword in values}
    try:
        check_charset(path, values.get("SpecificCharacterSet"))
        frames = check_image(path, image, pixel_bytes=None if syntax == _DEFLATED else length,
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
