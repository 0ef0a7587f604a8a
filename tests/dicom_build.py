"""Building DICOM test data with pydicom and GDCM, free of pytest and ctgen: shared by the fixtures in
``conftest.py`` and by ``fuzz_dicom.py``, which runs in its own process under a memory limit."""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence


def functional_group(**sequences) -> Dataset:
    """One item of an enhanced multi-frame file's functional groups: ``PixelMeasuresSequence={"PixelSpacing":
    [0.5, 0.5]}`` becomes a one-item sequence of a dataset with those attributes."""
    group = Dataset()
    for keyword, attributes in sequences.items():
        item = Dataset()
        for name, value in attributes.items():
            setattr(item, name, value)
        setattr(group, keyword, Sequence([item]))
    return group


def gdcm_change_syntax(src: str | Path, dst: Path, syntax) -> str | None:
    """Re-encode ``src`` into ``dst`` with GDCM (pydicom has no JPEG / JPEG-LS encoders without extra packages).
    None when it worked, else the step that failed: "read", "change" (no encoder for ``syntax``) or "write".
    Raises ImportError without python-gdcm."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        return "read"
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    change.SetInput(reader.GetImage())
    if not change.Change():
        return "change"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    return None if writer.Write() else "write"


# ------------------------------------------------------------------------------------- raw bytes
# Hostile files are easier to write as bytes than through pydicom, which refuses (or recurses on) them.
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_LONG_VRS = {vr.encode() for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV")}


def element(group: int, number: int, vr: str, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the length written (0xFFFFFFFF: undefined)."""
    length = len(value) if length is None else length
    if vr.encode() in _LONG_VRS:
        return struct.pack("<HH2sHI", group, number, vr.encode(), 0, length) + value
    return struct.pack("<HH2sH", group, number, vr.encode(), length) + value


def nested_sequences(depth: int, *, tag: tuple[int, int] = (0x0009, 0x1010)) -> bytes:
    """A private sequence holding ``depth`` levels of undefined-length sequences and items (explicit VR LE)."""
    opening = element(*tag, "SQ", b"", length=0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def pixel_data_offset(data: bytes, vr: bytes = b"OW") -> int:
    """Where the top-level (7FE0,0010) element of an explicit VR little endian file starts."""
    return data.rindex(PIXEL_DATA_TAG + vr)


def insert_before_pixels(data: bytes, extra: bytes, vr: bytes = b"OW") -> bytes:
    """``data`` (an explicit VR little endian file) with ``extra`` elements just before its pixel data."""
    at = pixel_data_offset(data, vr)
    return data[:at] + extra + data[at:]


def dataset_bytes(ds: Dataset, *, implicit: bool, little: bool) -> bytes:
    """A dataset's elements alone: no preamble, no file meta (an old archive's headerless file)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit, little
    write_dataset(out, ds)
    return out.getvalue()


def file_bytes(ds: Dataset, syntax) -> bytes:
    """A Part 10 file (preamble, file meta with ``syntax``) with the dataset encoded as ``syntax`` says."""
    import copy

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = syntax
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + dataset_bytes(ds, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian)


def top_level(body: bytes, *, implicit: bool = False, little: bool = True) -> list[tuple[int, int, bytes, int, int]]:
    """The top-level elements of a dataset's bytes, as (offset, tag, VR (b"" when implicit), length field
    offset, value offset), up to the first element of undefined length (its end is not known without parsing)."""
    endian, found, offset = "<" if little else ">", [], 0
    while offset + 8 <= len(body):
        group, number = struct.unpack_from(endian + "HH", body, offset)
        if implicit:
            vr, length_at, value_at = b"", offset + 4, offset + 8
            length = struct.unpack_from(endian + "I", body, length_at)[0]
        else:
            vr = body[offset + 4 : offset + 6]
            if vr in _LONG_VRS:
                length_at, value_at = offset + 8, offset + 12
                if value_at > len(body):
                    break
                length = struct.unpack_from(endian + "I", body, length_at)[0]
            else:
                length_at, value_at = offset + 6, offset + 8
                length = struct.unpack_from(endian + "H", body, length_at)[0]
        found.append((offset, group << 16 | number, vr, length_at, value_at))
        if length == 0xFFFFFFFF:
            break
        offset = value_at + length
    return found


def set_element(data: bytes, group: int, number: int, vr: str, value: bytes, *, start: int = 132,
                implicit: bool = False, little: bool = True) -> bytes:
    """``data`` with one top-level element replaced, or inserted in tag order (elements before it must have
    defined lengths; else ``data`` comes back unchanged). ``start``: where the elements begin (132: after
    the preamble, skipping the file meta group)."""
    wanted, endian = group << 16 | number, "<" if little else ">"
    if implicit:
        new = struct.pack(endian + "HHI", group, number, len(value)) + value
    elif vr.encode() in _LONG_VRS:
        new = struct.pack(endian + "HH2sHI", group, number, vr.encode(), 0, len(value)) + value
    else:
        new = struct.pack(endian + "HH2sH", group, number, vr.encode(), len(value)) + value
    elements = top_level(data[start:], implicit=implicit, little=little)
    for index, (offset, tag, _, _, _) in enumerate(elements):
        if tag >= wanted and tag >> 16 != 2:
            if tag != wanted:
                return data[: start + offset] + new + data[start + offset :]
            if index + 1 < len(elements):
                return data[: start + offset] + new + data[start + elements[index + 1][0] :]
            return data  # the last element known: where it ends is not
    return data
