"""DICOM headers through pydicom: the files the fast parser (``ctgen.io.dicom.header_fast``) leaves alone.

Big endian, deflate, enhanced multi-frame files whose geometry sits in functional groups, non-ASCII patient IDs
and files without the DICM preamble are read with ``stop_before_pixels``; the values come back in the fast
parser's form, so that ``ctgen.io.dicom.header`` makes one ``Header`` of either.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

from ctgen.io.dicom.header_fast import (
    BIG_ENDIAN, DEFLATED, EXPLICIT_LE, IMPLICIT_LE, LONG_VRS, MAX_VALUE, NATIVE_SYNTAXES, PIXEL_TAGS, UNDEFINED, WANTED,
    fragments_cut,
)
from ctgen.io.dicom.limits import bounded_reader, check_deflated_file
from ctgen.io.dicom.validate import check_depth, dataset_depth, nesting_error
from ctgen.errors import DicomError

__all__ = ["read_with_pydicom"]


def read_with_pydicom(path: Path, start: bytes, size: int) -> tuple[dict, str, str, int, bool]:
    """(values, transfer syntax, pixels kind, pixel value length, truncated), as ``parse_fast`` gives
    them, read by pydicom with ``stop_before_pixels``. Raises DicomError / LimitError."""
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
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=not preamble, defer_size=MAX_VALUE)
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
                return {}, "", "none", 0, True
            raise DicomError(path, "not a DICOM file") from None
        if not preamble and not (("Rows" in ds and "Columns" in ds) or "SOPClassUID" in ds or "Modality" in ds):
            raise DicomError(path, "not a DICOM file")
        header_cut = any("end of file" in str(w.message).lower() for w in caught)
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if not syntax:
            implicit, little = ds.original_encoding
            syntax = IMPLICIT_LE if implicit else (EXPLICIT_LE if little else BIG_ENDIAN)
        pixels, length, truncated, pixel_vr = "none", 0, header_cut, None
        if syntax == DEFLATED:  # positions in an inflated stream say nothing about the file
            pixels, length = _deflated_pixels(path)
        elif not header_cut:
            handle.seek(position)
            element = handle.read(12)
            little = syntax != BIG_ENDIAN
            if len(element) >= 8:
                group, number = struct.unpack("<HH" if little else ">HH", element[:4])
                if (group << 16 | number) in PIXEL_TAGS:
                    explicit = syntax != IMPLICIT_LE and element[4:6] in LONG_VRS
                    pixel_vr = (group << 16 | number, element[4:6] if explicit else None)
                    if element[4:6] in LONG_VRS:  # the element itself says how it is encoded
                        length = struct.unpack("<I" if little else ">I", element[8:12])[0]
                        value_offset = position + 12
                    else:
                        length = struct.unpack("<I" if little else ">I", element[4:8])[0]
                        value_offset = position + 8
                    if length == UNDEFINED and syntax in NATIVE_SYNTAXES:  # as in parse_fast
                        pixels, truncated = "native", True
                    elif length == UNDEFINED:
                        pixels = "encapsulated"
                        truncated = fragments_cut(handle, value_offset, size, "<" if little else ">")
                    else:
                        pixels, truncated = "native", value_offset + length > size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom converts values now, and warns about malformed ones
        values = {keyword: _pydicom_value(ds, keyword, kind) for keyword, kind in WANTED.values() if keyword in ds}
        try:
            values.update(_enhanced_geometry(ds))
        except Exception:  # noqa: BLE001 - damaged functional groups: check_frames says why
            pass
        values["ModalityLUTSequence"] = "ModalityLUTSequence" in ds
        if pixel_vr is not None:
            values["_pixel_vr"] = pixel_vr
        if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
            values["_frames"] = ds  # spacing and rescale per frame, as the reader resolves them
        meta = getattr(ds, "file_meta", None)
        for keyword, stored in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not values.get(keyword) and meta is not None:
                values[keyword] = _pydicom_value(meta, stored, "text") or ""
        return values, syntax, pixels, length, truncated


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
    pydicom holds it (parsed by ``ctgen.io.dicom.validate.numbers``), texts a tuple, text a string."""
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

