"""Structured fuzzing of the DICOM reader (issue 15): real headers, mutated field by field.

Seeds are pydicom's real CT files (CT_small natively and as RLE, JPEG 2000, JPEG-LS, JPEG lossless; the
512² JPEG 2000 head 693_J2KI) and a three-frame enhanced CT with functional groups (native and RLE).
Each case applies up to seven mutations: pixel spacing, rescale (top level or functional group), rows,
columns, frames, bits allocated/stored, high bit, pixel representation, photometric interpretation,
samples per pixel, padding, the transfer syntax label (consistent or lying), truncated pixel data,
damaged codestream bytes.

The invariant: reading either raises a ctgen error (not one caused by running out of memory) or gives
finite float32 HU with no or a plausible spacing, which ``to_model`` turns into a finite image in [0, 1]
(or refuses with InputError); each case stays under a time and a peak-memory bound.

``--target scan`` fuzzes ``ctgen scan`` against the reader instead (issue 23): see "scan" below.

Run it where a native crash cannot take anything down with it: ``tests/test_dicom_fuzz.py`` starts it in
a subprocess under an address-space limit. By hand: ``python tests/fuzz_dicom.py --examples 10000``
(``--target scan``, ``--target scan --truncations``).
Every case is written to ``--log`` before it runs, so a crash leaves the culprit as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import re
import struct
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    AllTransferSyntaxes, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLossless,
    JPEGLSLossless, RLELossless, generate_uid,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ctgen.io.dicom import read_frames, read_slice  # noqa: E402
from ctgen.errors import CtgenError, InputError  # noqa: E402
from ctgen.images.preprocess import SPACING_RANGE_MM, Grid, to_model  # noqa: E402
from dicom_build import (  # noqa: E402 - tests/ is this script's folder
    dataset_bytes, file_bytes, functional_group, gdcm_change_syntax, nested_sequences, set_element, top_level,
)

MAX_PIXELS = 1 << 22  # the reader's limit during fuzzing: bounds below are stated against it
# per case, reading and preprocessing (a 2048² decode takes well under a second), in CPU seconds of this
# process: a bound that a loaded machine does not break (a scan that took 0.2 s of CPU took 12.7 s of wall time
# beside a training run); a case that blocks without computing is stopped by the wall-clock deadline in case()
TIME_LIMIT_S = 5.0
MEMORY_LIMIT_MB = 600  # peak resident memory per case above the process's size before it
GRID = Grid(size=64, spacing_mm=3.75)
CT_SMALL = get_testdata_file("CT_small.dcm")

pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE  # write whatever a mutation sets


# ----------------------------------------------------------------------------------------- seeds
def _compressed(ds: Dataset, syntax) -> Dataset | None:
    ds = copy.deepcopy(ds)
    try:
        ds.compress(syntax)
    except Exception:  # noqa: BLE001 - no encoder here: the seed is left out
        return None
    return ds


def _gdcm(ds: Dataset, syntax) -> Dataset | None:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        ds.save_as(source, enforce_file_format=True)
        return None if gdcm_change_syntax(source, target, syntax) else pydicom.dcmread(target)


def _enhanced() -> Dataset:
    """Three 32 x 32 frames of an enhanced CT: spacing and rescale in the shared and per-frame groups."""
    ds = pydicom.dcmread(CT_SMALL)
    frames = np.stack([ds.pixel_array[i * 32 : i * 32 + 32, 32:64] for i in range(3)])
    ds.set_pixel_data(frames.astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SharedFunctionalGroupsSequence = Sequence([functional_group(
        PixelMeasuresSequence={"PixelSpacing": [0.7, 0.7], "SliceThickness": 2},
        PixelValueTransformationSequence={"RescaleIntercept": -1024, "RescaleSlope": 1})])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        functional_group(PlanePositionSequence={"ImagePositionPatient": [0, 0, z]},
                         PixelValueTransformationSequence={"RescaleIntercept": -1000 - z, "RescaleSlope": 1 + z / 10})
        for z in range(3)])
    return ds


def make_seeds() -> dict[str, Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = pydicom.dcmread(CT_SMALL)
        enhanced = _enhanced()
        seeds = {"ct": ct, "ct-rle": _compressed(ct, RLELossless), "ct-j2k": _compressed(ct, JPEG2000Lossless),
                 "ct-jpegls": _gdcm(ct, JPEGLSLossless), "ct-jpeg-lossless": _gdcm(ct, JPEGLossless),
                 "head-j2k-512": pydicom.dcmread(get_testdata_file("693_J2KI.dcm")),
                 "enhanced": enhanced, "enhanced-rle": _compressed(enhanced, RLELossless)}
    return {name: ds for name, ds in seeds.items() if ds is not None}


SEEDS = make_seeds()
SYNTAXES = [uid for uid in AllTransferSyntaxes if uid.is_transfer_syntax] + ["1.2.3.4.5"]


# ------------------------------------------------------------------------------------- mutations
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64).map(lambda v: f"{v:.8g}"),
    st.sampled_from(["1e-5", "1e-320", "1e-300", "1e39", "-1e39", "NaN", "inf", "-inf", "0", "-0", "", "abc",
                     "0.05", "20", "0.0499", "20.01", "1e-3", "1e6"]),
    st.integers(-(2**31), 2**31 - 1).map(str),
)
US = st.one_of(st.sampled_from([0, 1, 2, 7, 127, 128, 129, 255, 256, 512, 2048, 2049, 4096, 8192, 32768, 65535]),
               st.integers(0, 65535))

MUTATION = st.one_of(
    st.tuples(st.just("PixelSpacing"), st.one_of(st.none(), st.lists(NUMBERS, min_size=0, max_size=3))),
    st.tuples(st.sampled_from(["RescaleSlope", "RescaleIntercept"]), st.one_of(st.none(), NUMBERS)),
    st.tuples(st.sampled_from(["group.RescaleSlope", "group.RescaleIntercept"]), NUMBERS),
    st.tuples(st.just("group.PixelSpacing"), st.lists(NUMBERS, min_size=0, max_size=3)),
    st.tuples(st.sampled_from(["Rows", "Columns"]), US),
    st.tuples(st.just("NumberOfFrames"),
              st.one_of(st.none(), st.sampled_from(["0", "-1", "2", "3", "4", "100", "2147483647", "x"]),
                        st.integers(0, 10**6).map(str))),
    st.tuples(st.just("BitsAllocated"), st.sampled_from([8, 8, 16, 16, 16, 32, 32, 0, 1, 12, 24, 64, 255])),
    st.tuples(st.sampled_from(["BitsStored", "HighBit"]),
              st.one_of(st.sampled_from([7, 8, 11, 12, 15, 16, 31, 32]), st.integers(0, 64))),
    st.tuples(st.just("PixelRepresentation"), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("PhotometricInterpretation"),
              st.sampled_from(["MONOCHROME1", "MONOCHROME1", "MONOCHROME2", "MONOCHROME2", "MONOCHROME2", "RGB",
                               "PALETTE COLOR", "YBR_FULL", "", "XYZ"])),
    st.tuples(st.just("SamplesPerPixel"), st.sampled_from([1, 1, 1, 0, 3, 4])),
    st.tuples(st.just("PixelPaddingValue"), st.integers(-32768, 65535)),
    st.tuples(st.just("syntax"), st.tuples(st.sampled_from(SYNTAXES), st.booleans())),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("damage"), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), min_size=1, max_size=8)),
)
CASE = st.tuples(st.sampled_from(sorted(SEEDS)), st.lists(MUTATION, max_size=7), st.booleans())


def _set(ds: Dataset, keyword: str, value) -> None:
    if value is None:
        if keyword in ds:
            delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)


def _frames_of(ds: Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))


def build(seed: str, mutations: list) -> bytes:
    """The seed with ``mutations`` applied, as the bytes of a DICOM file (the label may lie about the body)."""
    ds = copy.deepcopy(SEEDS[seed])
    body_syntax = label = ds.file_meta.TransferSyntaxUID
    for keyword, value in mutations:
        if keyword.startswith("group."):
            for group in ds.get("SharedFunctionalGroupsSequence") or []:
                sequence = "PixelMeasuresSequence" if keyword.endswith("Spacing") else "PixelValueTransformationSequence"
                for item in group.get(sequence) or []:
                    _set(item, keyword.removeprefix("group."), value)
        elif keyword == "syntax":
            label, consistent = pydicom.uid.UID(value[0]), value[1]
            if consistent and not body_syntax.is_compressed and label.is_transfer_syntax and not label.is_compressed:
                body_syntax = label  # re-encode the body to match the label
        elif keyword == "truncate":
            ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * value)]
        elif keyword == "damage" and ds.file_meta.TransferSyntaxUID.is_compressed:
            try:
                frames = [bytearray(frame) for frame in _frames_of(ds)]
            except Exception:  # noqa: BLE001 - already broken by another mutation
                continue
            for position, mask in value:
                frame = frames[int(position * len(frames)) % len(frames)]
                if frame:
                    frame[int(position * (len(frame) - 1))] ^= mask
            ds.PixelData = encapsulate([bytes(frame) for frame in frames])
        else:
            _set(ds, keyword, value)
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = label
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    body = DicomBytesIO()
    encoding = ExplicitVRLittleEndian if body_syntax == DeflatedExplicitVRLittleEndian else body_syntax
    body.is_little_endian = encoding.is_little_endian if encoding.is_transfer_syntax else True
    body.is_implicit_VR = encoding.is_implicit_VR if encoding.is_transfer_syntax else False
    write_dataset(body, ds)
    data = body.getvalue()
    if body_syntax == DeflatedExplicitVRLittleEndian:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    return out.getvalue() + data


# ------------------------------------------------------------------------------------- invariant
def _peak_rss_mb() -> float | None:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Stats:
    def __init__(self):
        self.cases = self.errors = self.read = self.refused_by_to_model = self.unwritable = 0
        self.slowest_s = 0.0
        self.peak_mb = 0.0
        self.reasons: dict[str, int] = {}


def check_case(path: Path, all_frames: bool, stats: Stats) -> None:
    """Read ``path`` and preprocess what was read; assert the invariant."""
    baseline = _peak_rss_mb() if _reset_peak_rss() else None
    start = time.process_time()
    slices = []
    try:
        slices = read_frames(path, max_pixels=MAX_PIXELS) if all_frames else [read_slice(path, max_pixels=MAX_PIXELS)]
    except CtgenError as error:
        cause = error.__cause__
        assert not isinstance(cause, (MemoryError, RecursionError)), f"{type(cause).__name__} became {error}"
        assert "\n" not in str(error), f"a multi-line error: {error!r}"
        stats.errors += 1
        reason = re.sub(r"[0-9]+", "N", getattr(error, "reason", str(error)))[:60]
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
    for one in slices:
        stats.read += 1
        assert one.hu.dtype == np.float32 and one.hu.ndim == 2 and one.hu.size > 0, (one.hu.dtype, one.hu.shape)
        assert one.hu.size <= MAX_PIXELS
        assert np.isfinite(one.hu).all(), "non-finite HU"
        low, high = SPACING_RANGE_MM
        assert one.spacing_mm is None or all(low <= v <= high for v in one.spacing_mm), one.spacing_mm
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "no pixel spacing" is the documented warning
                warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow/invalid warnings are not
                image = to_model(one.hu, one.spacing_mm, GRID)
        except InputError:
            stats.refused_by_to_model += 1
            continue
        assert image.shape == (GRID.size, GRID.size) and np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() <= 1.0
    elapsed = time.process_time() - start
    stats.cases += 1
    stats.slowest_s = max(stats.slowest_s, elapsed)
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.1f} s of CPU"
    if baseline is not None:
        grown = _peak_rss_mb() - baseline
        stats.peak_mb = max(stats.peak_mb, grown)
        assert grown < MEMORY_LIMIT_MB, f"peak memory grew by {grown:.0f} MB"


def _hypothesis(examples: int, seed: int | None, strategy, body, *, shrink: bool = True) -> None:
    """Run ``body`` on ``examples`` draws of ``strategy``: the same cases every time when ``seed`` is None.
    Without ``shrink`` the first failing case is reported as it is (the log names it)."""
    options = dict(max_examples=examples, deadline=None, database=None, print_blob=True,
                   suppress_health_check=list(HealthCheck))
    if not shrink:
        options["phases"] = [Phase.explicit, Phase.reuse, Phase.generate]
    if seed is None:
        options["derandomize"] = True
    case = settings(**options)(given(strategy)(body))
    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        case = hypothesis_seed(seed)(case)
    case()


def run(examples: int, *, seed: int | None, log: Path | None) -> Stats:
    """Fuzz ``examples`` cases; raises (hypothesis's report) on the first broken invariant."""
    stats = Stats()
    with _workspace(log) as (folder, log_stream):
        _hypothesis(examples, seed, CASE, lambda spec: _reader_case(spec, folder, log_stream, stats))
    return stats


def _reader_case(spec, folder: Path, log_stream, stats: Stats) -> None:
    seed_name, mutations, all_frames = spec
    if log_stream:
        log_stream.write(f"{seed_name} all_frames={all_frames} {mutations!r}\n")
        log_stream.flush()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's complaints about the values it is asked to write
            data = build(seed_name, mutations)
    except Exception:  # noqa: BLE001 - a mutation pydicom cannot write: nothing to read
        stats.unwritable += 1
        return
    path = folder / "case.dcm"
    path.write_bytes(data)
    check_case(path, all_frames, stats)


@contextlib.contextmanager
def _deadline(seconds: float):
    """TimeoutError in the body once ``seconds`` have passed (where SIGALRM exists)."""
    import signal

    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(*_):
        raise TimeoutError(f"the case runs longer than {seconds:g} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _workspace(log: Path | None):
    """(an empty temporary folder, the log stream or None), both gone afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ctgen-fuzz-"))
    log_stream = open(log, "w") if log else None  # noqa: SIM115 - closed below
    try:
        yield folder, log_stream
    finally:
        if log_stream:
            log_stream.close()
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()


# ------------------------------------------------------------------------------------- scan (issue 23)
# Scan's own header parser against the reader, on header mutations made in the bytes (where pydicom would
# refuse to write them) and on truncations. The invariant: scan never stops on an internal error; each case
# stays under the time and memory bounds; and scan and the reader agree: what the reader reads, scan calls
# usable (ok, or skipped for a selection rule only), and what scan calls ok the reader reads, wherever the
# header decides it (native pixel data: a damaged codestream shows only when decoded).
READABLE = {"ok", "localizer", "not-axial", "duplicate"}  # reasons of files the reader reads
UNDECIDED = {"secondary-capture"}  # a selection rule that comes before the checks of values


@dataclass(frozen=True)
class ScanSeed:
    meta: bytes  # preamble and file meta ("" for a headerless file)
    body: bytes  # the dataset as the encoding below says
    implicit: bool
    little: bool
    deflated: bool = False


def _scan_seed(ds: Dataset, syntax, *, headerless: bool = False) -> ScanSeed:
    deflated = syntax == DeflatedExplicitVRLittleEndian
    encoding = ExplicitVRLittleEndian if deflated else syntax
    body = dataset_bytes(ds, implicit=encoding.is_implicit_VR, little=encoding.is_little_endian)
    meta = b"" if headerless else file_bytes(ds, syntax)[: -len(body)] if not deflated else \
        file_bytes(ds, ExplicitVRLittleEndian)[: -len(body)].replace(
            _padded_uid(ExplicitVRLittleEndian), _padded_uid(DeflatedExplicitVRLittleEndian))
    return ScanSeed(meta, body, encoding.is_implicit_VR, encoding.is_little_endian, deflated)


def _padded_uid(uid) -> bytes:
    return b"\x10\x00UI" + struct.pack("<H", len(uid) + len(uid) % 2) + uid.encode() + b"\0" * (len(uid) % 2)


def make_scan_seeds() -> dict[str, ScanSeed]:
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    ct = SEEDS["ct"]
    seeds = {"ct": _scan_seed(ct, ExplicitVRLittleEndian), "ct-implicit": _scan_seed(ct, ImplicitVRLittleEndian),
             "ct-big-endian": _scan_seed(ct, ExplicitVRBigEndian),
             "ct-headerless": _scan_seed(ct, ImplicitVRLittleEndian, headerless=True),
             "ct-deflated": _scan_seed(ct, DeflatedExplicitVRLittleEndian),
             "enhanced": _scan_seed(SEEDS["enhanced"], ExplicitVRLittleEndian)}
    for name in ("ct-rle", "ct-j2k", "enhanced-rle"):
        if name in SEEDS:
            seeds[name] = _scan_seed(SEEDS[name], SEEDS[name].file_meta.TransferSyntaxUID)
    with_meta = file_bytes(ct, ExplicitVRLittleEndian)
    assert with_meta == seeds["ct"].meta + seeds["ct"].body
    return seeds


SCAN_SEEDS = make_scan_seeds()
VALUE_KEYWORDS = {"Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US", "SamplesPerPixel": "US",
                  "NumberOfFrames": "IS", "PixelSpacing": "DS", "RescaleSlope": "DS", "RescaleIntercept": "DS",
                  "PhotometricInterpretation": "CS", "ImageOrientationPatient": "DS", "SliceThickness": "DS"}
TEXT = st.one_of(NUMBERS, st.lists(NUMBERS, min_size=2, max_size=3).map("\\".join),
                 st.sampled_from(["MONOCHROME2", "MONOCHROME1", "RGB", "", "1\\0\\0\\0\\1\\0", "0.5\\0.5"]),
                 st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12))
RAW = st.one_of(
    st.tuples(st.just("vr"), st.floats(0.0, 1.0),
              st.sampled_from([vr.encode() for vr in ("OB", "OW", "SQ", "UN", "UT", "US", "UL", "DS", "IS", "CS",
                                                         "SH", "UI", "AT", "FD")] + [b"\0\0", b"ZZ", b"  "])),
    st.tuples(st.just("length"), st.floats(0.0, 1.0),
              st.one_of(st.integers(-16, 16), st.sampled_from([0xFFFFFFFF, 0xFFFFFFFE, 2**31, 2**20, 65535]),
                        st.integers(0, 2**32 - 1))),
    st.tuples(st.just("nest"), st.one_of(st.integers(0, 40), st.integers(0, 600))),
    st.tuples(st.just("value"), st.sampled_from(sorted(VALUE_KEYWORDS)),
              st.one_of(TEXT, st.binary(max_size=5), US.map(lambda v: struct.pack("<H", v)))),
    st.tuples(st.just("long"), st.integers(65536, 1 << 19)),  # longer ones: tests/test_scan.py
)
SCAN_CASE = st.tuples(st.sampled_from(sorted(SCAN_SEEDS)), st.lists(RAW, max_size=4),
                      st.one_of(st.none(), st.none(), st.floats(0.0, 1.0)))


def build_scan_case(seed_name: str, mutations: list, cut: float | None) -> tuple[bytes, int, int]:
    """The seed with ``mutations`` made in its bytes, cut at ``cut`` of the way to its pixel data (None: not
    cut). Returns (bytes, hole, where): a "long" mutation's value is ``hole`` zero bytes to be written at
    ``where`` as a hole in a sparse file (0, 0 without one)."""
    seed = SCAN_SEEDS[seed_name]
    body, endian, hole_header = bytearray(seed.body), "<" if seed.little else ">", b""
    for index, (kind, *arguments) in enumerate(mutations):
        # the header: elements up to the pixel data (a damaged one after it makes pydicom drop the whole
        # dataset, where scan, which reads headers, cannot see it)
        elements = [one for one in top_level(bytes(body), implicit=seed.implicit, little=seed.little)
                    if one[1] <= 0x7FE00010]
        pick = elements[min(int(arguments[0] * len(elements)), len(elements) - 1)] if elements and kind in (
            "vr", "length") else None
        if kind == "vr" and pick and not seed.implicit:
            body[pick[0] + 4 : pick[0] + 6] = arguments[1]
        elif kind == "length" and pick:
            offset, _, _, length_at, _ = pick
            size, order = (2 if length_at == offset + 6 else 4), ("little" if seed.little else "big")
            old = int.from_bytes(body[length_at : length_at + size], order)
            value = old + arguments[1] if -16 <= arguments[1] <= 16 else arguments[1]
            body[length_at : length_at + size] = (value % (1 << (8 * size))).to_bytes(size, order)
        elif kind == "nest" and seed.little and not seed.implicit:
            pixels = _pixel_offset(bytes(body), seed)
            # a tag of its own: of repeated tags pydicom keeps the last, and the reader never sees the others
            body[pixels:pixels] = nested_sequences(arguments[0], tag=(0x0009, 0x1020 + index))
        elif kind == "long" and not seed.deflated and not hole_header:
            pixels = _pixel_offset(bytes(body), seed)
            hole_header = (struct.pack(endian + "HHI", 0x0009, 0x1010, arguments[0]) if seed.implicit else
                           struct.pack(endian + "HH2sHI", 0x0009, 0x1010, b"OB", 0, arguments[0]))
            body[pixels:pixels] = hole_header
        elif kind == "value":
            keyword, value = arguments
            tag = pydicom.datadict.tag_for_keyword(keyword)
            raw = value.encode("latin-1") if isinstance(value, str) else value
            if not seed.little and VALUE_KEYWORDS[keyword] == "US" and len(raw) == 2:
                raw = raw[::-1]
            body = bytearray(set_element(bytes(body), tag >> 16, tag & 0xFFFF, VALUE_KEYWORDS[keyword],
                                         raw + b" " * (len(raw) % 2), start=0, implicit=seed.implicit,
                                         little=seed.little))
    body = bytes(body)
    pixels = _pixel_offset(body, seed)
    if seed.deflated:
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = packer.compress(body) + packer.flush()
    data = seed.meta + body
    if cut is not None:
        return data[: int(cut * (len(seed.meta) + pixels + 16))], 0, 0
    at = data.rfind(hole_header) if hole_header else -1
    if at < 0:
        return data, 0, 0
    return data, struct.unpack_from(endian + "I", hole_header, len(hole_header) - 4)[0], at + len(hole_header)


def _pixel_offset(body: bytes, seed: ScanSeed) -> int:
    tag = b"\xe0\x7f\x10\x00" if seed.little else b"\x7f\xe0\x00\x10"
    at = body.rfind(tag)
    return at if at >= 0 and not seed.deflated else len(body)


def _pixel_element_size(body: bytes, seed: ScanSeed) -> int:
    return len(body) - _pixel_offset(body, seed)


def _write_case(path: Path, data: bytes, hole: int = 0, where: int = 0) -> None:
    with open(path, "wb") as handle:
        handle.write(data[:where] if hole else data)
        if hole:
            handle.seek(hole, os.SEEK_CUR)  # sparse: the long value costs no disk
            handle.write(data[where:])


class ScanStats(Stats):
    def __init__(self):
        super().__init__()
        self.scan_reasons: dict[str, int] = {}
        self.checked_both_ways = 0


def check_scan_case(path: Path, stats: ScanStats) -> None:
    """Scan ``path``, read it, assert the invariant."""
    from ctgen.io.scan import scan
    from ctgen.io.scan_entry import REASONS

    baseline = _peak_rss_mb() if _reset_peak_rss() else None
    start = time.process_time()
    (entry,) = scan([path]).entries
    scanned = time.process_time() - start
    if baseline is not None:  # scan reads headers only, whatever the file's size
        grown = _peak_rss_mb() - baseline
        stats.peak_mb = max(stats.peak_mb, grown)
        assert grown < MEMORY_LIMIT_MB, f"scan's peak memory grew by {grown:.0f} MB"
        baseline = _peak_rss_mb() if _reset_peak_rss() else None
    assert entry.reason in REASONS, entry
    assert not entry.detail.startswith("internal error"), entry.detail
    assert "\n" not in entry.detail, entry.detail
    stats.scan_reasons[entry.reason] = stats.scan_reasons.get(entry.reason, 0) + 1
    error = None
    try:
        read_frames(path, max_pixels=MAX_PIXELS)
    except CtgenError as caught:
        error = caught
        assert not isinstance(caught.__cause__, (MemoryError, RecursionError)), f"{caught.__cause__!r} became {caught}"
    elapsed = time.process_time() - start
    stats.cases += 1
    stats.errors += error is not None
    stats.read += error is None
    stats.slowest_s = max(stats.slowest_s, elapsed)
    assert scanned < TIME_LIMIT_S and elapsed < 2 * TIME_LIMIT_S, f"scan took {scanned:.1f} s of CPU, both {elapsed:.1f} s"
    if baseline is not None:  # the reader reads the whole file (a long element's hole included)
        grown = _peak_rss_mb() - baseline
        assert grown < MEMORY_LIMIT_MB + path.stat().st_size / 2**20, f"the reader's peak memory grew by {grown:.0f} MB"
    if entry.reason in UNDECIDED:
        return
    if error is None:
        assert entry.reason in READABLE, f"the reader reads it, scan says {entry.reason}: {entry.detail}"
    elif entry.reason in READABLE and _native(path):
        stats.checked_both_ways += 1
        raise AssertionError(f"scan says {entry.reason}, the reader refuses: {error}")


def _native(path: Path) -> bool:
    from ctgen.io.dicom.header import read_header

    try:
        return read_header(path).pixels == "native"
    except CtgenError:
        return False


def run_scan(examples: int, *, seed: int | None, log: Path | None, truncations: bool = False) -> ScanStats:
    """Fuzz scan against the reader: ``examples`` hypothesis cases, or (``truncations``) every cut of every seed
    up to its pixel data."""
    from ctgen.io.dicom import set_max_pixels

    set_max_pixels(MAX_PIXELS)
    stats = ScanStats()
    with _workspace(log) as (folder, log_stream):
        path = folder / "case.dcm"

        def one(label: str, data: bytes, hole: int = 0, where: int = 0) -> None:
            if log_stream:
                log_stream.write(label + "\n")
                log_stream.flush()
            _write_case(path, data, hole, where)
            started = time.perf_counter()
            with _deadline(4 * TIME_LIMIT_S):  # a hang fails the case instead of stopping the run
                check_scan_case(path, stats)
            if log_stream:
                log_stream.write(f"  {time.perf_counter() - started:.2f} s\n")

        def case(spec):
            seed_name, mutations, cut = spec
            one(f"{seed_name} cut={cut} {mutations!r}", *build_scan_case(seed_name, mutations, cut))

        try:
            if truncations:
                for seed_name, one_seed in sorted(SCAN_SEEDS.items()):
                    data = build_scan_case(seed_name, [], None)[0]  # deflated as the seed says
                    end = len(data) if one_seed.deflated else len(one_seed.meta) + _pixel_offset(one_seed.body,
                                                                                               one_seed) + 16
                    for cut in range(end):
                        one(f"{seed_name} cut at byte {cut}", data[:cut])
            else:
                _hypothesis(examples, seed, SCAN_CASE, case, shrink=False)
        finally:
            set_max_pixels(None)
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized, the same cases)")
    parser.add_argument("--log", type=Path, default=None, help="write each case here before running it")
    parser.add_argument("--target", choices=("reader", "scan"), default="reader",
                        help="the reader alone, or scan against the reader (issue 23)")
    parser.add_argument("--truncations", action="store_true",
                        help="with --target scan: every cut of every seed up to its pixel data, no random cases")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.target == "scan":
        stats = run_scan(args.examples, seed=args.seed, log=args.log, truncations=args.truncations)
        print(f"fuzz scan: {stats.cases} cases in {time.perf_counter() - started:.1f} s: {stats.read} read by "
              f"the reader, {stats.errors} refused; scan reasons "
              + ", ".join(f"{count} {reason}" for reason, count in sorted(stats.scan_reasons.items()))
              + f"; slowest case {stats.slowest_s:.2f} s of CPU, largest peak-memory growth {stats.peak_mb:.0f} MB")
        return
    stats = run(args.examples, seed=args.seed, log=args.log)
    print(f"fuzz: {stats.cases} cases ({stats.unwritable} more that pydicom could not write) in "
          f"{time.perf_counter() - started:.1f} s: {stats.errors} ctgen errors, "
          f"{stats.read} slices read ({stats.refused_by_to_model} refused by to_model); slowest case "
          f"{stats.slowest_s:.2f} s of CPU, largest peak-memory growth {stats.peak_mb:.0f} MB")
    for reason, count in sorted(stats.reasons.items(), key=lambda item: -item[1])[:25]:
        print(f"  {count:6d}  {reason}")


if __name__ == "__main__":
    main()
