"""What the reader checks before any decoder runs: the decoded size, and the size the codestream declares.

A header can ask a decoder for gigabytes (Rows x Columns x frames) and a codestream can declare a
larger image than its header: both are refused here, from the header and the first bytes of each
compressed frame, before pixel data is decoded. Deflated files are inflated once, in chunks, to
refuse decompression bombs before pydicom inflates them whole, and files are parsed through a stream
whose reads never ask for more than the file holds.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from ctgen.errors import DicomError, InputError

__all__ = ["HEADER_SLACK_BYTES", "MAX_PIXELS_DEFAULT", "MAX_PIXELS_ENV", "MAX_READS", "MAX_SIDECAR_BYTES",
           "MAX_SIDECAR_NESTING", "LimitError", "bounded_reader", "check_codestream", "check_deflated",
           "check_deflated_file", "check_pixel_count", "max_pixels", "set_max_pixels"]

MAX_PIXELS_DEFAULT = 1 << 26  # 67,108,864 pixels: one 8192² image or 256 frames of 512²
MAX_PIXELS_ENV = "CTGEN_MAX_PIXELS"
_IN_MEMORY_BYTES = 64 << 20  # files up to this size are parsed from memory
MAX_READS = 1 << 17  # reads while parsing one file: 50,000-130,000 data elements (1,000 frames of an enhanced CT)
_INFLATE_SLACK = 16 << 20  # bytes of header a deflated file may hold besides its pixels
HEADER_SLACK_BYTES = _INFLATE_SLACK  # the same bound for what a NIfTI file holds before its voxels
MAX_SIDECAR_BYTES = 1 << 20  # a JSON sidecar holds a few header values: a few kB
MAX_SIDECAR_NESTING = 16  # levels of arrays and objects in a sidecar (dcm2niix writes 2)
_SOF_MARKERS = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7}  # 0xF7: JPEG-LS
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_setting_lock = threading.Lock()
_max_pixels: int | None = None


class LimitError(DicomError):
    """A file beyond a limit of the reader (sequence nesting, inflated size): refused before it is parsed whole."""


def set_max_pixels(limit: int | None) -> None:
    """Set the process-wide limit on decoded pixels per read (Rows x Columns x frames decoded).

    None restores the default: the environment variable CTGEN_MAX_PIXELS when set, else
    MAX_PIXELS_DEFAULT. Raises InputError for a limit below 1. The reader checks the limit before any
    decoder runs; ``ctgen.io.dicom.read_slice`` and friends also take ``max_pixels=`` per call.
    """
    global _max_pixels
    if limit is not None:
        limit = _positive_int(limit, "max_pixels")
    with _setting_lock:
        _max_pixels = limit


def max_pixels() -> int:
    """The limit in force: ``set_max_pixels``'s, else CTGEN_MAX_PIXELS, else MAX_PIXELS_DEFAULT.

    Raises InputError when CTGEN_MAX_PIXELS is set to something other than a positive integer.
    """
    if _max_pixels is not None:
        return _max_pixels
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return _positive_int(text, MAX_PIXELS_ENV) if text else MAX_PIXELS_DEFAULT


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = 0
    if number < 1 or isinstance(value, bool) or (isinstance(value, float) and value != number):
        raise InputError(name, f"must be a positive whole number of pixels, not {str(value)[:40]!r}")
    return number


def check_pixel_count(path, rows: int, columns: int, frames: int, limit: int | None) -> None:
    """DicomError when ``rows x columns x frames`` exceeds ``limit`` (None: ``max_pixels()``)."""
    limit = max_pixels() if limit is None else _positive_int(limit, "max_pixels")
    if rows * columns * frames > limit:
        size = f"{columns} x {rows} pixels" + (f" x {frames} frames" if frames > 1 else "")
        raise DicomError(path, f"image of {size} exceeds the limit of {limit:,} decoded pixels "
                               f"(raise it with --max-pixels or {MAX_PIXELS_ENV})")


def check_codestream(path, syntax: UID, frames: Iterable[bytes], rows: int, columns: int, samples: int,
                     bits_allocated: int, bits_stored: int) -> None:
    """Check what each JPEG, JPEG-LS or JPEG 2000 frame declares against the header, before decoding.

    ``frames``: the encapsulated frames to be decoded (their first bytes are enough). Raises DicomError
    for a frame that is not a codestream of its transfer syntax, or that declares another image size or
    number of components (decoders allocate what the codestream says, not what the header says); for
    JPEG and JPEG-LS also for a sample precision beyond BitsAllocated, and for bit depths that GDCM does
    not decode (it aborts the process on them: BitsAllocated 32, and JPEG with BitsStored below 8).
    """
    if syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        parse = _jpeg_size
        if bits_allocated not in (8, 16):
            raise DicomError(path, f"{syntax.name} with BitsAllocated {bits_allocated} is not supported (8 or 16)")
        if syntax in JPEGTransferSyntaxes and bits_stored < 8:
            raise DicomError(path, f"{syntax.name} with BitsStored {bits_stored} is not supported (8 to 16)")
    elif syntax in JPEG2000TransferSyntaxes:
        parse = _j2k_size
    else:
        return
    for frame in frames:
        declared = parse(frame)
        if declared is None:
            start = bytes(frame[:4]).hex(" ") or "nothing"
            raise DicomError(path, f"pixel data is not a {syntax.name} codestream (it starts with {start})")
        height, width, components, precision = declared
        if width != columns or height not in (rows, 0):
            raise DicomError(path, f"the {syntax.name} codestream declares {width} x {height} pixels, "
                                   f"the header {columns} x {rows}")
        if components != samples:
            raise DicomError(path, f"the {syntax.name} codestream has {components} components, "
                                   f"the header {samples} samples per pixel")
        if parse is _jpeg_size and precision > bits_allocated:
            raise DicomError(path, f"the {syntax.name} codestream holds {precision}-bit samples, "
                                   f"the header allocates {bits_allocated} bits")


def _jpeg_size(frame: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, components, precision) from the frame header of a JPEG or JPEG-LS codestream; None if
    there is none.

    A height of 0 means "defined later by a DNL marker"."""
    if frame[:2] != b"\xff\xd8":
        return None
    position, end = 2, min(len(frame), 1 << 20)
    while position + 4 <= end:
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in _STANDALONE:
            position += 2
        elif marker in _SOF_MARKERS:
            if position + 10 > len(frame):
                return None
            height, width = struct.unpack(">HH", frame[position + 5 : position + 9])
            return height, width, frame[position + 9], frame[position + 4]
        elif marker in (0xD8, 0xD9, 0xDA):  # a second SOI, the end or a scan before any frame header
            return None
        else:
            position += 2 + struct.unpack(">H", frame[position + 2 : position + 4])[0]
    return None


def _j2k_size(frame: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, components, precision) from the SIZ segment of a JPEG 2000 codestream (bare or in a
    JP2 file); the precision is the first component's."""
    start = 0
    if frame[:12] == _JP2_SIGNATURE:
        start = frame.find(b"\xff\x4f\xff\x51", 12, 1 << 16)
        if start < 0:
            return None
    if frame[start : start + 4] != b"\xff\x4f\xff\x51" or len(frame) < start + 43:
        return None
    x_size, y_size, x_offset, y_offset = struct.unpack(">IIII", frame[start + 8 : start + 24])
    components = struct.unpack(">H", frame[start + 40 : start + 42])[0]
    if x_offset > x_size or y_offset > y_size:
        return None
    return y_size - y_offset, x_size - x_offset, components, (frame[start + 42] & 0x7F) + 1


def check_deflated(path: Path, syntax: UID | None, dataset_offset: int | None, limit_pixels: int | None) -> None:
    """Refuse a deflated file whose dataset inflates beyond 4 bytes per allowed pixel plus 16 MiB.

    ``dataset_offset``: where the deflated dataset starts (after the file meta group). pydicom inflates
    the whole dataset in one call, so a few megabytes of zeros could otherwise ask for gigabytes.
    """
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    if dataset_offset is None:
        raise DicomError(path, "deflated file without a file meta group length")
    limit_bytes = 4 * (max_pixels() if limit_pixels is None else limit_pixels) + _INFLATE_SLACK
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        with open(path, "rb") as stream:
            stream.seek(dataset_offset)
            while not inflater.eof and (block := stream.read(1 << 16)):
                while block and not inflater.eof:  # bytes after the end of the stream stay unconsumed
                    total += len(inflater.decompress(block, 1 << 20))
                    block = inflater.unconsumed_tail
                    if total > limit_bytes:
                        raise LimitError(path, f"deflated dataset inflates beyond {limit_bytes:,} bytes "
                                               f"(raise the pixel limit with --max-pixels or {MAX_PIXELS_ENV})")
    except zlib.error as exc:
        raise DicomError(path, f"corrupt deflated dataset ({exc})") from None


def check_deflated_file(path: Path, head: bytes, limit_pixels: int | None) -> None:
    """``check_deflated`` for a file whose first bytes (``head``, 4 KiB are enough) name the deflated transfer
    syntax: its file meta says where the dataset starts. Files without a readable file meta pass."""
    if DeflatedExplicitVRLittleEndian.encode() not in head:
        return
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - no file meta: parsing the file says what is wrong
        return
    length = meta.get("FileMetaInformationGroupLength")
    try:
        offset = None if length is None else 144 + int(length)
    except (TypeError, ValueError):
        offset = None
    check_deflated(path, meta.get("TransferSyntaxUID"), offset, limit_pixels)


def bounded_reader(path: Path, *, in_memory: bool = True) -> io.BufferedIOBase:
    """The file as a stream whose reads never ask for more than is left in it, and that raises LimitError
    after MAX_READS reads.

    A file's read(n) allocates n bytes before reading, so a damaged element length of 4 GB would allocate
    4 GB for the few bytes there are. Files up to _IN_MEMORY_BYTES are read whole (BytesIO reads what there
    is, and is the fastest for pydicom's many small reads); larger ones, and all when not ``in_memory``, are
    clamped read by read (a header is read without the rest of the file). pydicom
    reads two or three times per element: a damaged length that leaves megabytes of zeros to be parsed as
    empty elements would otherwise take minutes.
    """
    if in_memory and path.stat().st_size <= _IN_MEMORY_BYTES:
        return _CountedBytes(path.read_bytes(), path)
    return _BoundedReader(path)


def _too_many_reads(path) -> LimitError:
    return LimitError(path, f"more than {MAX_READS:,} reads to parse the header: far more data elements than "
                            "any image holds (a damaged length?)")


class _CountedBytes(io.BytesIO):
    def __init__(self, data: bytes, path: Path):
        super().__init__(data)
        self._path, self._reads = path, 0

    def read(self, size: int | None = -1, /) -> bytes:
        self._reads += 1
        if self._reads > MAX_READS:
            raise _too_many_reads(self._path)
        return super().read(size)


class _BoundedReader(io.BufferedReader):
    def __init__(self, path: Path):
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size
        self._path, self._reads = path, 0

    def read(self, size: int | None = -1, /) -> bytes:
        self._reads += 1
        if self._reads > MAX_READS:
            raise _too_many_reads(self._path)
        if size is not None and size > 1 << 16:  # smaller reads allocate little: no tell() for them
            size = min(size, max(0, self._size - self.tell()))
        return super().read(size)
