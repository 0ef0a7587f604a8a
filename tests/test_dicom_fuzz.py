"""Fuzzing the DICOM reader (issue 15) and scan against it (issue 23): ``tests/fuzz_dicom.py`` in a subprocess
under an address-space limit, so that a decoder that aborts or runs away fails this test instead of killing
the test run.

The default run has the same 200 cases of each every time (derandomized); the slow set draws 2,000 new ones of
each and cuts every scan seed at every byte up to its pixel data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).with_name("fuzz_dicom.py")
ADDRESS_SPACE = 4 * 2**30  # the interpreter with numpy, pydicom and the decoders maps about 1.5 GiB


def _fuzz(tmp_path: Path, *arguments: str, timeout: float) -> str:
    log = tmp_path / "cases.log"
    preexec = None
    if sys.platform.startswith("linux"):
        import resource

        def preexec():
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    result = subprocess.run([sys.executable, str(FUZZ), "--log", str(log), *arguments], capture_output=True,
                            text=True, timeout=timeout, preexec_fn=preexec, cwd=tmp_path,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    last = log.read_text().splitlines()[-1:] if log.exists() else []
    assert result.returncode == 0, (f"exit {result.returncode}; last case: {last}\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    assert result.stderr == "", result.stderr[-4000:]  # nothing printed past ctgen's errors
    return result.stdout


def test_reader_fuzz_200_cases(tmp_path):
    summary = _fuzz(tmp_path, "--examples", "200", timeout=120)
    assert summary.startswith("fuzz: "), summary


@pytest.mark.slow
def test_reader_fuzz_2000_random_cases(tmp_path):
    summary = _fuzz(tmp_path, "--examples", "2000", "--seed", str(int.from_bytes(os.urandom(4), "little")),
                    timeout=900)
    assert summary.startswith("fuzz: "), summary


def test_scan_fuzz_200_cases(tmp_path):  # issue 23: scan against the reader
    summary = _fuzz(tmp_path, "--target", "scan", "--examples", "200", timeout=120)
    assert summary.startswith("fuzz scan: 200 cases"), summary


@pytest.mark.slow
def test_scan_fuzz_2000_random_cases(tmp_path):
    summary = _fuzz(tmp_path, "--target", "scan", "--examples", "2000",
                    "--seed", str(int.from_bytes(os.urandom(4), "little")), timeout=900)
    assert summary.startswith("fuzz scan: 2000 cases"), summary


@pytest.mark.slow
def test_scan_fuzz_every_truncation_up_to_the_pixel_data(tmp_path):
    summary = _fuzz(tmp_path, "--target", "scan", "--truncations", timeout=900)
    assert summary.startswith("fuzz scan: "), summary
