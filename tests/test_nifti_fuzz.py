"""Fuzzing NIfTI headers: dims, datatype, pixdim, vox_offset, scaling, qform and sform of NIfTI-1 and -2
volumes, stray header bytes, gzip and plain files cut short or followed by junk, and sidecars. Every case must
end in a scan entry and in slices or one DicomError naming the file (never another exception), quickly, and
scan must call a volume unreadable exactly when the reader refuses it.

200 cases run by default, 2,000 under ``slow``; ``NIFTI_FUZZ_CASES`` sets another number (a one-off run).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")

from nifti_build import ct_volume, nifti_bytes  # noqa: E402

from ctgen.io.dicom import set_max_pixels  # noqa: E402
from ctgen.errors import DicomError  # noqa: E402
from ctgen.io.nifti import read_volume  # noqa: E402
from ctgen.io.scan import scan  # noqa: E402

MAX_SECONDS = 5.0  # per case: a hang or a gigabyte inflated shows up here
_DIMS_1 = [-1, 0, 1, 2, 3, 7, 255, 4096, 32767]
_DIMS_2 = _DIMS_1 + [1 << 20, 1 << 31, 1 << 40, 1 << 62]
_DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 9999, -1]
_FLOATS = [0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3e38, np.nan, np.inf, -np.inf, 1e-45]
_OFFSETS = [0.0, 100.0, 348.0, 352.0, 353.0, 540.0, 544.0, 4096.0, 1e9, 1e30, -5.0, 352.5, np.nan, np.inf]
_SIDECARS = [None, '{"Modality": "CT"}', '{"Modality": "MR"}', '{"Modality": ', "[" * 5000, '{"ImageType": 3}']


def _mutated(seed: int, folder: Path) -> Path:
    """One fuzz case, written under ``folder``: a small CT volume whose header, bytes or compression were damaged."""
    rng = np.random.default_rng(seed)
    version = int(rng.integers(1, 3))
    dtype = [np.int16, np.uint8, np.float32, np.float64, np.int32][int(rng.integers(5))]
    data = ct_volume((int(rng.integers(4, 20)), int(rng.integers(4, 20)), int(rng.integers(1, 4))), dtype)
    if dtype in (np.float32, np.float64) and rng.random() < 0.3:
        data.flat[int(rng.integers(data.size))] = [np.nan, np.inf, -np.inf, 1e300 if dtype == np.float64 else 3e38][
            int(rng.integers(4))]
    raw = nifti_bytes(data, version=version, spacing_mm=float(rng.choice([0.5, 1.0, 2.5])))
    size = 348 if version == 1 else 540
    kind = nibabel.Nifti1Header if version == 1 else nibabel.Nifti2Header
    header = kind(binaryblock=raw[:size], check=False)
    for _ in range(int(rng.integers(0, 4))):
        field = str(rng.choice(["dim", "datatype", "pixdim", "vox_offset", "scl_slope", "scl_inter", "qform",
                                "sform", "quatern", "magic", "sizeof_hdr"]))
        if field == "dim":
            dims = _DIMS_1 if version == 1 else _DIMS_2
            index = int(rng.integers(0, 8))
            header["dim"][index] = int(rng.integers(-1, 9)) if index == 0 else dims[int(rng.integers(len(dims)))]
        elif field == "datatype":
            header["datatype"] = _DATATYPES[int(rng.integers(len(_DATATYPES)))]
        elif field == "pixdim":
            header["pixdim"][int(rng.integers(0, 8))] = _FLOATS[int(rng.integers(len(_FLOATS)))]
        elif field == "vox_offset":
            with np.errstate(all="ignore"):  # NIfTI-2 holds an integer: NaN and inf become what numpy makes them
                header["vox_offset"] = np.array(_OFFSETS[int(rng.integers(len(_OFFSETS)))]).astype(
                    header["vox_offset"].dtype)
        elif field in ("scl_slope", "scl_inter"):
            header[field] = _FLOATS[int(rng.integers(len(_FLOATS)))]
        elif field == "qform":
            header["qform_code"] = int(rng.choice([0, 1, 2, 5, -1]))
            header["qoffset_x"] = _FLOATS[int(rng.integers(len(_FLOATS)))]
        elif field == "sform":
            header["sform_code"] = int(rng.choice([0, 1, 2, 5, -1]))
            row = str(rng.choice(["srow_x", "srow_y", "srow_z"]))
            header[row][int(rng.integers(0, 4))] = _FLOATS[int(rng.integers(len(_FLOATS)))]
        elif field == "quatern":
            header["qform_code"] = 1
            header[str(rng.choice(["quatern_b", "quatern_c", "quatern_d"]))] = float(
                rng.choice([0.0, 0.5, 1.0, 2.0, -3.0, np.nan]))
        elif field == "magic":
            header["magic"] = rng.choice([b"ni1", b"n+2", b"n+1", b"xyz"]) if version == 1 else \
                rng.choice([b"ni2", b"n+1", b"n+2", b"xyz"])
        else:
            header["sizeof_hdr"] = int(rng.choice([0, 348, 540, 1000]))
    raw = bytearray(header.binaryblock + raw[size:])
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):  # stray bytes in the header
        raw[int(rng.integers(0, size))] = int(rng.integers(0, 256))
    raw = bytes(raw)
    compress = rng.random() < 0.5
    if compress:
        raw = gzip.compress(raw, compresslevel=1, mtime=0)
    cut = rng.random()
    if cut < 0.25:
        raw = raw[: int(rng.integers(0, len(raw)))]
    elif cut < 0.35:
        raw = raw + bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    path = folder / f"case{seed}.nii{'.gz' if compress else ''}"
    path.write_bytes(raw)
    sidecar = _SIDECARS[int(rng.integers(len(_SIDECARS)))] if rng.random() < 0.4 else None
    if sidecar is not None:
        (folder / f"case{seed}.json").write_text(sidecar)
    return path


def _check(seed: int, folder: Path) -> str:
    """One case: no exception but DicomError, within MAX_SECONDS, scan and reader agree. Returns the outcome."""
    case = folder / str(seed)
    case.mkdir()
    path = _mutated(seed, case)
    start = time.perf_counter()
    entry = scan([path]).entries[0]
    try:
        slices = read_volume(path)
        refused = None
    except DicomError as error:
        refused = str(error)
        assert refused.startswith(str(path)), (seed, refused)
    elapsed = time.perf_counter() - start
    assert elapsed < MAX_SECONDS, (seed, elapsed)
    assert (entry.reason == "not-dicom") == (refused is not None), (seed, entry.reason, entry.detail, refused)
    if refused is None:
        assert entry.frames == len(slices) and all(np.isfinite(one.hu).all() for one in slices), seed
    return entry.reason


def _run(count: int, first: int, folder: Path) -> dict[str, int]:
    set_max_pixels(1 << 20)  # keeps every case small; the limit itself is one of the checks
    try:
        outcomes: dict[str, int] = {}
        for seed in range(first, first + count):
            reason = _check(seed, folder)
            outcomes[reason] = outcomes.get(reason, 0) + 1
        return outcomes
    finally:
        set_max_pixels(None)


def test_nifti_header_fuzz(tmp_path):
    outcomes = _run(int(os.environ.get("NIFTI_FUZZ_CASES", 200)), 0, tmp_path)
    assert outcomes.get("ok", 0) >= 10 and outcomes.get("not-dicom", 0) >= 10, outcomes  # both sides are reached


@pytest.mark.slow
def test_nifti_header_fuzz_long(tmp_path):
    _run(2000, 100_000, tmp_path)


def test_the_fuzz_writes_what_it_means_to(tmp_path):
    """A case without mutations is a readable volume, and sidecars land beside their volume."""
    readable = [seed for seed in range(40) if _check(seed, tmp_path) == "ok"]
    assert readable
    path = next((tmp_path / str(readable[0])).iterdir())
    side = path.with_name(path.name.split(".")[0] + ".json")
    assert not side.exists() or json.loads(side.read_text()).get("Modality") == "CT"
