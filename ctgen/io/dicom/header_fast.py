"""The fast DICOM header parser: the top-level elements of a little-endian file up to its pixel data.

``parse_fast`` reads explicit or implicit VR, native or encapsulated pixel data, seeking over long values it
does not want, and answers None for everything else (``ctgen.io.dicom.header_pydicom`` reads those). The tables
here (transfer syntaxes, VRs, the wanted tags) describe the encoding for both readers.
"""

from __future__ import annotations

import struct

from ctgen.io.dicom.validate import check_depth

__all__ = ["parse_fast", "fragments_cut"]

FIRST_READ = 64 * 1024  # the whole header of nearly every file; more is read only when a header is longer
MAX_VALUE = 64 * 1024  # a wanted value longer than this is malformed: it is skipped, not read
_OVERLONG = "\x00overlong"  # what such a value becomes: text that no check accepts
_MODALITY_LUT = 0x00283000
_INTEGER_VRS = {None: "<H", b"US": "<H", b"SS": "<h", b"UL": "<I", b"SL": "<i"}  # None: implicit, or UN
UNDEFINED = 0xFFFFFFFF
_VRS = {vr.encode() for vr in ("AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                                "UC UI UL UN UR US UT UV").split()}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # PixelData, FloatPixelData, DoubleFloatPixelData
PIXEL_VRS = {0x7FE00010: (b"OB", b"OW"), 0x7FE00008: (b"OF",), 0x7FE00009: (b"OD",)}  # what each may be stored as
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SEQUENCE_VRS = (None, b"SQ", b"UN")  # what an element of undefined length (other than pixel data) may be
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
BIG_ENDIAN, DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = (EXPLICIT_LE, IMPLICIT_LE, BIG_ENDIAN)

# tag -> (keyword, kind): the top-level values the header keeps. Kinds: text (one string), texts (backslash
# separated), number (DS/IS, floats), ushort (US)
WANTED = {
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
    0x00280103: ("PixelRepresentation", "ushort"),
    0x00281052: ("RescaleIntercept", "number"),
    0x00281053: ("RescaleSlope", "number"),
    0x00282110: ("LossyImageCompression", "text"),
}
_FUNCTIONAL_GROUPS = {0x52009229, 0x52009230}  # enhanced multi-frame geometry: pydicom reads those files




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
        wanted = min(max(count - len(kept), FIRST_READ), self.size - self.base - len(self.data))
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


def parse_fast(data: bytes, size: int, handle, path=None) -> tuple[dict, str, str, int, bool] | None:
    """(values, transfer syntax, pixels kind, pixel value length, truncated) or None (pydicom's case)."""
    values: dict = {}
    meta: dict = {}
    syntax = ""
    buffer = _Buffer(data, handle, size)
    try:
        meta, offset = _parse_meta(buffer, meta)
        syntax = meta.get("TransferSyntaxUID", "")
        if syntax == IMPLICIT_LE:
            explicit = False
        elif syntax and syntax not in (BIG_ENDIAN, DEFLATED):
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
    if length == UNDEFINED and syntax in NATIVE_SYNTAXES:  # pydicom reads to a delimiter that native data lacks
        return values, syntax, "native", 0, True
    if length == UNDEFINED:
        return values, syntax, "encapsulated", length, fragments_cut(handle, value_offset, size, "<")
    return values, syntax, "native", length, value_offset + length > size


def fragments_cut(handle, offset: int, size: int, endian: str) -> bool:
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
        if tag != _ITEM or length == UNDEFINED:
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
    if vr in LONG_VRS:
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
        if length == UNDEFINED:
            raise _Fallback
        if element in (0x0000, 0x0002, 0x0003, 0x0010) and length <= MAX_VALUE:
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
    wanted, unpack = WANTED, struct.unpack_from
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
                if vr in LONG_VRS:
                    (length,) = unpack("<I", data, offset + 8)
                    start = offset + 12
                else:
                    (length,) = unpack("<H", data, offset + 6)
                    start = offset + 8
            else:
                vr = None
                (length,) = unpack("<I", data, offset + 4)
                start = offset + 8
        if tag in PIXEL_TAGS:
            values["_pixel_vr"] = (tag, vr)  # what the element says it holds (None: implicit VR)
            return buffer.base + start, length
        if tag in _FUNCTIONAL_GROUPS:
            raise _Fallback
        if length == UNDEFINED or vr == b"SQ":  # a sequence (SQ, or UN holding implicit-VR items)
            if length == UNDEFINED and vr not in _SEQUENCE_VRS:
                raise _Fallback  # OB, UT... of undefined length: pydicom reads to the first delimiter; let it judge
            if tag == _MODALITY_LUT:
                values["ModalityLUTSequence"] = True
            end = None if length == UNDEFINED else buffer.base + start + length
            offset = _skip_sequence(buffer, start, end, explicit and vr != b"UN", 1, path)
            data = buffer.data
            continue
        end = start + length
        entry = wanted.get(tag)
        if entry is not None and length <= MAX_VALUE:
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
        if length == UNDEFINED:
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
        if length == UNDEFINED and vr not in _SEQUENCE_VRS:
            raise _Fallback  # as at the top level (_walk_top_level)
        if length == UNDEFINED:
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
    if kind == "number":  # as stored: ctgen.io.dicom.validate.numbers strips it as it strips pydicom's bytes
        return raw.decode("ascii", "replace")
    text = raw.decode("ascii", "replace").rstrip("\x00 ").strip()
    if kind == "texts":
        return tuple(part.strip() for part in text.split("\\"))
    return text  # "text"; "number" is parsed where it is used (ctgen.io.dicom.validate.numbers)

