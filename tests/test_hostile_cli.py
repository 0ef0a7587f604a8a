"""Issue 15, items 1-4 through the real ``ctgen`` process: each hostile file gives exactly one line on the
process's stderr (file descriptor 2, where decoders print past Python), and a header that asks for
gigabytes fails cleanly under an address-space limit instead of aborting."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLossless, RLELossless

from conftest import (
    CT_SMALL, DEFAULT_MODEL, REPO_ROOT, ct_small_compressed, gdcm_transcode, j2k_declaring, run_ctgen, save_dicom,
)


def _ct_small(path: Path, **attributes) -> Path:
    ds = pydicom.dcmread(CT_SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about NaN in a DS
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return save_dicom(ds, path)


def _half(frame: bytearray) -> bytearray:
    return frame[: len(frame) // 2]


def hostile_files(folder: Path) -> dict[str, str]:
    """Write the campaign's DICOM files into ``folder``: {file name: a fragment of the expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, spacing in (("spacing-1e-5.dcm", "1e-5"), ("spacing-1e-300.dcm", "1e-300"),
                          ("spacing-1e-320.dcm", "1e-320")):
        _ct_small(folder / name, PixelSpacing=[spacing, spacing])
        expected[name] = "implausible pixel spacing"
    for name, keyword, value, reason in (("slope-nan.dcm", "RescaleSlope", "NaN", "invalid RescaleSlope"),
                                         ("slope-0.dcm", "RescaleSlope", "0", "invalid RescaleSlope 0"),
                                         ("intercept-1e39.dcm", "RescaleIntercept", "1e39", "beyond float32")):
        _ct_small(folder / name, **{keyword: value})
        expected[name] = reason
    save_dicom(ct_small_compressed(RLELossless, Rows=32768, Columns=32768), folder / "rle-32768.dcm")
    expected["rle-32768.dcm"] = "exceeds the limit of 67,108,864 decoded pixels"
    save_dicom(ct_small_compressed(JPEG2000Lossless, j2k_declaring(16384)), folder / "j2k-lies.dcm")
    expected["j2k-lies.dcm"] = "codestream declares 16384 x 16384 pixels"
    mislabelled = ct_small_compressed(JPEG2000Lossless)
    mislabelled.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    save_dicom(mislabelled, folder / "j2k-as-jpeg.dcm")
    expected["j2k-as-jpeg.dcm"] = "not a JPEG Baseline (Process 1) codestream"
    save_dicom(ct_small_compressed(JPEG2000Lossless, _half), folder / "j2k-cut.dcm")  # OpenJPEG prints
    expected["j2k-cut.dcm"] = "cannot decode JPEG 2000"
    return expected


def test_each_hostile_file_gives_one_line_and_nothing_else(tmp_path):  # items 1-4
    expected = hostile_files(tmp_path / "hostile")
    named = sorted((tmp_path / "hostile").iterdir())  # named, each is read as given (a folder gets scan's selection)
    result = run_ctgen(["encode", *named, "--skip-bad", "--model", DEFAULT_MODEL], cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == f"ctgen: {len(expected)} of {len(expected)} inputs failed and were skipped", result.stderr
    reasons = {}
    for line in lines[:-1]:
        assert line.startswith(f"ctgen: skipped {tmp_path / 'hostile'}/"), result.stderr
        name, reason = line.removeprefix(f"ctgen: skipped {tmp_path / 'hostile'}/").split(": ", 1)
        reasons[name] = reason
    assert sorted(reasons) == sorted(expected), result.stderr
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])


def test_a_hostile_folder_leaves_out_what_scan_refuses_and_skips_what_then_fails_to_read(tmp_path):
    hostile_files(tmp_path / "hostile")
    result = run_ctgen(["encode", "hostile", "--skip-bad", "--model", DEFAULT_MODEL], cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "ctgen: note: hostile/: 3 of 10 files used (scan's selection; left out: 7 invalid)"
    assert [line.split(": ")[1] for line in lines[1:-1]] == [  # headers scan accepts, pixel data that fails
        "skipped hostile/j2k-as-jpeg.dcm", "skipped hostile/j2k-cut.dcm", "skipped hostile/j2k-lies.dcm"]
    assert lines[-1] == "ctgen: 3 of 3 inputs failed and were skipped", result.stderr


@pytest.mark.parametrize("name", ["spacing-1e-320.dcm", "j2k-cut.dcm"])  # numpy warnings, decoder output
def test_one_bad_file_gives_exactly_one_error_line(tmp_path, name):  # items 1, 4
    hostile_files(tmp_path / "hostile")
    result = run_ctgen(["encode", tmp_path / "hostile" / name, "--model", DEFAULT_MODEL], cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("ctgen: error: "), result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_oversized_header_fails_cleanly_under_an_address_space_limit(tmp_path):  # item 2
    import resource

    limit = int(3.3 * 2**30)  # where the RLE decoder used to abort the process (exit 134, no ctgen line)
    path = save_dicom(ct_small_compressed(RLELossless, Rows=32768, Columns=32768), tmp_path / "rle.dcm")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-m", "ctgen", "encode", str(path), "--model", str(DEFAULT_MODEL)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"ctgen: error: {path}: image of 32768 x 32768 pixels exceeds the limit "
                                          "of 67,108,864 decoded pixels (raise it with --max-pixels or CTGEN_MAX_PIXELS)"]


@pytest.mark.parametrize("bits", [{"BitsAllocated": 32}, {"BitsAllocated": 8, "BitsStored": 7, "HighBit": 6}])
def test_bit_depths_that_make_gdcm_abort_are_refused(tmp_path, bits):  # items 2, 4: found by the fuzz test
    ds = pydicom.dcmread(gdcm_transcode(CT_SMALL, tmp_path / "jpeg.dcm", JPEGLossless))
    for keyword, value in bits.items():
        setattr(ds, keyword, value)
    path = save_dicom(ds, tmp_path / "bits.dcm")
    reader = "import sys; from ctgen.io.dicom import read_slice; read_slice(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", reader, str(path)], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=60)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # GDCM's C++ exception: SIGABRT
    assert result.stderr.splitlines()[-1].startswith("ctgen.errors.DicomError: "), result.stderr[-2000:]
    assert "is not supported" in result.stderr


BEYOND_BOUNDS = [  # issue 23.11: (arguments, the option named): internal errors, MemoryError or NaN before
    (["sample", "--n", "99999999999999999999"], "--n"),
    (["sample", "--seed", "-1"], "--seed"),
    (["--seed", "-1", "sample"], "--seed"),
    (["sample", "--temperature", "1e308"], "--temperature"),
    (["traverse", "--steps", "99999999999999999999"], "--steps"),
    (["traverse", "--steps", "1000000000"], "--steps"),
    (["interpolate", "a.dcm", "b.dcm", "--steps", "99999999999999999999"], "--steps"),
    (["traverse", "--range", "1e308"], "--range"),
    (["encode", "a.dcm", "--batch-size", "99999999999999999999"], "--batch-size"),
    (["sample", "--num", "3"], "--num"),  # and issue 24, item 6: unknown options, the same on both paths
    (["encode", "a.dcm", "--bacth-size", "8"], "--bacth-size"),
]
_EACH = """
import contextlib, io, json, sys
from ctgen.cli import main
seen = []
for argv in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            main(argv)
        except SystemExit as done:
            seen.append([done.code, stderr.getvalue()])
print(json.dumps(seen))
"""


@pytest.mark.parametrize("fast_path", ["on", "off"])
def test_option_values_beyond_their_bounds_are_usage_errors(tmp_path, fast_path):  # issue 23, item 11
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CTGEN_NO_FAST_PATH": "1" if fast_path == "off" else ""}
    result = subprocess.run([sys.executable, "-c", _EACH, json.dumps([argv for argv, _ in BEYOND_BOUNDS])],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for (argv, option), (code, stderr) in zip(BEYOND_BOUNDS, json.loads(result.stdout), strict=True):
        assert code == 2 and stderr.count("\n") == 1 and stderr.startswith(f"ctgen: error: {option}: "), (argv, stderr)
    assert os.listdir(tmp_path) == []
