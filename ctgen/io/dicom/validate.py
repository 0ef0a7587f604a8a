"""Header values the reader refuses, judged in one place.

``ctgen scan`` (from its own header parser, ``ctgen.io.dicom.header``) and the reader (``ctgen.io.dicom.read``,
from pydicom's dataset) call the same checks with the values as the file holds them, so that a scan's "ok"
means the reader reads the file: image size, frames, bits, the native pixel data's length, pixel spacing,
rescale, and how deep sequences nest.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

from ctgen.io.dicom.common import one_line
from ctgen.io.dicom.limits import LimitError, check_pixel_count
from ctgen.errors import DicomError
from ctgen.images.preprocess import SPACING_RANGE_MM

__all__ = ["BITS_ALLOCATED", "HU_LIMIT", "IMAGE_KEYWORDS", "MALFORMED", "MAX_SEQUENCE_DEPTH", "attr", "check_charset",
           "check_depth", "check_frames", "check_image", "dataset_depth", "floats", "functional_groups",
           "nesting_error", "numbers", "rescale", "shown", "spacing_mm", "value"]

BITS_ALLOCATED = (8, 16, 32)
HU_LIMIT = 1e30  # |slope| x 2^BitsAllocated + |intercept| must stay below this: every HU a finite float32
MAX_SEQUENCE_DEPTH = 32  # sequences inside sequences; CT images use 3 (functional groups), SR trees ~10
IMAGE_KEYWORDS = ("PhotometricInterpretation", "SamplesPerPixel", "NumberOfFrames", "Rows", "Columns",
                  "BitsAllocated", "BitsStored", "PixelRepresentation")  # what check_image judges
_NESTING = f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels"


def numbers(value, *, vr: str = "DS") -> tuple[float, ...] | None:
    """A DS or IS value (text, bytes, number, or several of them) as floats: () when empty or absent (None),
    None when malformed. Non-finite values are returned as such; the checks refuse them. As pydicom does, a DS
    value loses every whitespace character around it (so one of control characters like \\x1e is empty), an IS
    value only its padding (one of control characters stays, and is malformed)."""
    if value is None:
        return ()
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        text = value.strip("\x00").strip() if vr == "DS" else value.strip("\x00 ")
        parts: list = text.split("\\") if text else []
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            return None
    try:
        return tuple(float(part) for part in parts)
    except (TypeError, ValueError, OverflowError):
        return None


def floats(value, count: int | None = None, *, positive: bool = False) -> tuple[float, ...] | None:
    """``numbers`` when there are ``count`` of them (any number when None), all finite (and > 0 when
    ``positive``); None otherwise."""
    values = numbers(value)
    usable = values and all(math.isfinite(v) and (v > 0 or not positive) for v in values)
    return values if usable and len(values) == (count or len(values)) else None


def shown(value) -> str:
    """A header value for a message: its repr, so control characters and line breaks stay on one line."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return repr(value)[:40]


def _ushort(path, values: Mapping, keyword: str) -> int:
    value = values.get(keyword)
    if value is None or value == "":
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return value
    raise DicomError(path, f"invalid {keyword} {shown(value)}")


def check_image(path, values: Mapping, *, pixel_bytes: int | None, compressed: bool,
                max_pixels: int | None = None) -> int:
    """Check an image's header values before its pixel data is decoded; returns the number of frames.

    ``values``: keyword -> value as the file holds it (absent keys are absent): NumberOfFrames (text or
    number), Rows, Columns, BitsAllocated, BitsStored, PixelRepresentation (int; anything else is malformed),
    SamplesPerPixel, PhotometricInterpretation (text). ``pixel_bytes``: the length of native pixel data (None
    when unknown); ``compressed``: encapsulated pixel data, whose length says nothing about the image. Raises
    DicomError: colour, invalid frames or image size, BitsAllocated other than 8, 16 or 32, BitsStored beyond
    it, PixelRepresentation other than 0 or 1, empty or short native pixel data, or more than ``max_pixels``
    pixels in one frame.
    """
    photometric = str(values.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = values.get("SamplesPerPixel")
    if (samples not in (None, "", 1)) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(path, f"colour images are not supported (photometric interpretation {shown(photometric)})")
    frame_values = numbers(values.get("NumberOfFrames"), vr="IS")
    if frame_values is None or len(frame_values) > 1 or (frame_values and not (
            math.isfinite(frame_values[0]) and frame_values[0] == int(frame_values[0]))):
        raise DicomError(path, f"invalid NumberOfFrames {shown(values.get('NumberOfFrames'))}")
    frames = int(frame_values[0]) if frame_values else 1
    if frames < 1:
        raise DicomError(path, f"invalid number of frames {frames}")
    rows, columns = _ushort(path, values, "Rows"), _ushort(path, values, "Columns")
    if rows < 1 or columns < 1:
        raise DicomError(path, f"invalid image size {columns} x {rows} pixels")
    bits = values.get("BitsAllocated")
    if bits not in BITS_ALLOCATED or isinstance(bits, bool):
        raise DicomError(path, f"BitsAllocated {shown(bits)} is not supported (8, 16 or 32)")
    stored = values.get("BitsStored")
    stored = bits if stored is None or stored == "" else stored
    if not isinstance(stored, int) or not 1 <= stored <= bits:
        raise DicomError(path, f"BitsStored {shown(stored)} does not fit BitsAllocated {bits}")
    representation = values.get("PixelRepresentation")
    if representation not in (None, "", 0, 1) or isinstance(representation, bool):  # absent or empty: unsigned
        raise DicomError(path, f"invalid PixelRepresentation {shown(representation)} (0 unsigned or 1 signed)")
    if pixel_bytes is not None and pixel_bytes == 0:
        raise DicomError(path, "pixel data is empty")
    if pixel_bytes is not None and not compressed:
        expected = (rows * columns * frames * bits + 7) // 8
        if pixel_bytes < expected:
            raise DicomError(path, f"file is truncated (pixel data has {pixel_bytes} of {expected} bytes)")
    check_pixel_count(path, rows, columns, 1, max_pixels)
    return frames


def spacing_mm(path, value) -> tuple[float, float] | None:
    """PixelSpacing as (row, column) mm; None when absent, empty or 0 (some writers store 0 for unknown).

    DicomError when it is anything else than two finite numbers inside SPACING_RANGE_MM: resampling by a
    damaged spacing would give a wrong image or ask for gigabytes."""
    spacing = numbers(value)
    if spacing == ():
        return None
    if spacing is not None and len(spacing) == 2 and 0.0 in spacing:
        return None
    low, high = SPACING_RANGE_MM
    if spacing is None or len(spacing) != 2 or not all(low <= v <= high for v in spacing):
        text = " x ".join(f"{v:g}" for v in spacing) + " mm" if spacing else shown(value)
        raise DicomError(path, f"implausible pixel spacing {text} (expected {low:g} to {high:g} mm)")
    return spacing


def rescale(path, slope, intercept, bits_allocated: int) -> tuple[float, float]:
    """(slope, intercept) from RescaleSlope and RescaleIntercept as the file holds them: absent or empty
    values are 1 and 0; zero, non-finite, malformed or overflowing values raise DicomError."""
    result = []
    for keyword, raw, default in (("RescaleSlope", slope, 1.0), ("RescaleIntercept", intercept, 0.0)):
        value = numbers(raw)
        value = (default,) if value == () else value
        if value is None or len(value) != 1 or not math.isfinite(value[0]):
            raise DicomError(path, f"invalid {keyword} {shown(raw)} (not a finite number)")
        result.append(value[0])
    slope, intercept = result
    if slope == 0.0:
        raise DicomError(path, "invalid RescaleSlope 0 (every pixel would have one value)")
    if abs(slope) * 2.0 ** int(bits_allocated) + abs(intercept) > HU_LIMIT:
        raise DicomError(path, f"rescale slope {slope:g}, intercept {intercept:g} takes HU beyond float32")
    return slope, intercept


def check_charset(path, value) -> None:
    """DicomError for a SpecificCharacterSet that pydicom cannot turn into codecs (it would fail on every text
    value); unknown names pass (pydicom falls back to its default for them)."""
    if value is None or value == "" or value == ():
        return
    from pydicom.charset import convert_encodings

    names = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    if not all(isinstance(name, str) for name in names):  # stored under a binary VR: pydicom fails on it
        raise DicomError(path, f"invalid SpecificCharacterSet {shown(value)} (not text)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # about unknown names: pydicom falls back to ASCII
            convert_encodings(names)
    except Exception as error:  # noqa: BLE001 - ValueError, LookupError and whatever else the lookup raises
        raise DicomError(path, f"invalid SpecificCharacterSet {shown(value)} ({one_line(error)})") from None


def check_depth(path, depth: int) -> None:
    """LimitError when sequences nest ``depth`` levels, beyond MAX_SEQUENCE_DEPTH."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise LimitError(path, _NESTING)


def nesting_error(path) -> LimitError:
    """The error for a file whose sequences nest too deep for a parser's recursion."""
    return LimitError(path, _NESTING)


def dataset_depth(ds, limit: int = MAX_SEQUENCE_DEPTH) -> int:
    """How deep a pydicom dataset's sequences nest (parsing them); stops counting past ``limit``."""
    deepest, stack = 0, [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        for tag in list(dataset.keys()):
            stored = dataset.get_item(tag, keep_deferred=True)  # as stored: nothing converted or read
            vr = stored.VR or _dictionary_vr(tag)
            if vr not in ("SQ", "UN") or stored.value is None:  # None: a long value deferred, left unparsed
                continue
            try:
                element = dataset[tag]
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 - a malformed value is judged where it is used, not here
                continue
            if element.VR == "SQ":
                deepest = max(deepest, depth + 1)
                if deepest > limit:
                    return deepest
                stack.extend((item, depth + 1) for item in element.value)
    return deepest


def _dictionary_vr(tag) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


MALFORMED = "\x00malformed"  # what ``value`` gives for a value pydicom cannot convert: no check accepts it


def value(ds, keyword: str):
    """``ds.get(keyword)``, or MALFORMED when pydicom cannot convert what is stored (a VR that does not fit the
    bytes, an unknown VR): optional values then count as malformed instead of failing the whole read."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - every conversion error of pydicom's
        return MALFORMED


def functional_groups(ds, frame: int) -> list:
    """The frame's and the shared functional group items of an enhanced multi-frame file (none otherwise)."""
    items = []
    for groups, index in ((ds.get("PerFrameFunctionalGroupsSequence"), frame),
                          (ds.get("SharedFunctionalGroupsSequence"), 0)):
        if groups and index < len(groups):
            items.append(groups[index])
    return items


def attr(ds, groups: list, sequence: str, keyword: str | None = None):
    """`keyword` from the frame's functional group, else the shared one (``groups``), else the top level.

    Without keyword: the first item of `sequence` in the frame's or the shared group, or None.
    """
    for group in groups:
        items = group.get(sequence)
        if items and (keyword is None or value(items[0], keyword) is not None):
            return items[0] if keyword is None else value(items[0], keyword)
    return None if keyword is None else value(ds, keyword)


def check_frames(path, ds, n_frames: int) -> None:
    """Every frame's pixel spacing and rescale, resolved as the reader resolves them (frame group, shared
    group, top level). Raises DicomError as ``spacing_mm`` and ``rescale``."""
    bits = int(ds.get("BitsAllocated") or 16)
    per_frame = len(ds.get("PerFrameFunctionalGroupsSequence") or ())
    # frames past the per-frame groups resolve alike (shared group, top level): one of them is checked
    for frame in range(min(n_frames, per_frame + 1)):
        groups = functional_groups(ds, frame)
        transform = attr(ds, groups, "PixelValueTransformationSequence")
        source = transform if transform is not None and "RescaleIntercept" in transform else ds
        if "ModalityLUTSequence" not in source and "RescaleIntercept" in source:
            rescale(path, value(source, "RescaleSlope"), value(source, "RescaleIntercept"), bits)
        spacing_mm(path, attr(ds, groups, "PixelMeasuresSequence", "PixelSpacing"))
