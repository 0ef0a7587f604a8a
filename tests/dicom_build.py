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


def set_element(data: bytes, group: int, number: int, vr: str, value: bytes) -> bytes:
    """An explicit VR little endian Part 10 file with one top-level element replaced, or inserted in tag order
    (top-level elements before it must have defined lengths)."""
    wanted, offset = group << 16 | number, 132
    while offset + 8 <= len(data):
        tag_group, tag_number = struct.unpack_from("<HH", data, offset)
        long_vr = data[offset + 4 : offset + 6] in _LONG_VRS
        length = struct.unpack_from("<I" if long_vr else "<H", data, offset + (8 if long_vr else 6))[0]
        end = offset + (12 if long_vr else 8) + length
        tag = tag_group << 16 | tag_number
        if tag >= wanted and tag_group != 2:
            return data[:offset] + element(group, number, vr, value) + data[end if tag == wanted else offset :]
        offset = end
    return data + element(group, number, vr, value)
