"""Fixtures and helpers shared by the CLI tests (imported by tests/test_cli*.py; holds no tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from ctgen.cli import app

REPO_ROOT = Path(__file__).resolve().parents[1]
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # real CT, 128 x 128
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
DEFAULT_MODEL = REPO_ROOT / "models" / "default"

runner = CliRunner()


def invoke(*args, input: str | None = None, env: dict | None = None):
    """Run the app in-process (Typer's runner) with separate stdout and stderr."""
    return runner.invoke(app, [str(arg) for arg in args], input=input, env=env)


def head_hu(size: int = 160, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """A crude axial head: air, skull ring (~1000 HU), brain (~35 HU) with ventricles; float32 (size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + shift, size / 2 - shift / 2
    r = np.hypot((yy - cy) / (0.42 * size), (xx - cx) / (0.34 * size))
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < 1.0] = 1000.0
    hu[r < 0.9] = 35.0 + rng.normal(0, 4, (r < 0.9).sum())
    ventricles = np.hypot((yy - cy) / (0.1 * size), (xx - cx) / (0.05 * size)) < 1.0
    hu[ventricles] = 5.0
    return hu


def write_heads(folder: Path, count: int, *, size: int = 160, spacing_mm: float = 1.5) -> list[Path]:
    """``count`` head slices written with ctgen.dicom.write_series into ``folder``; returns the paths."""
    from ctgen.dicom import write_series

    hu = np.stack([head_hu(size, shift=2.0 * index, seed=index) for index in range(count)])
    return write_series(hu, folder, spacing_mm=(spacing_mm, spacing_mm), description="cli test heads",
                        derivation="tests/test_cli_support.py", patient_id="PHANTOM-T", patient_name="PHANTOM")


def colour_file(folder: Path) -> Path:
    """pydicom's RGB test image relabelled as CT: must be refused for being colour."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    ds.Modality = "CT"
    path = folder / "colour.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def not_dicom(folder: Path) -> Path:
    path = folder / "notes.dcm"
    path.write_text("this is not a DICOM file\n")
    return path


@pytest.fixture(scope="session")
def heads(tmp_path_factory) -> list[Path]:
    """Six synthetic head slices (160 x 160 at 1.5 mm) in one folder."""
    return write_heads(tmp_path_factory.mktemp("heads"), 6)


@pytest.fixture
def model(tiny_model_dir) -> str:
    return str(tiny_model_dir)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_error_line(result, *fragments: str) -> str:
    """Assert exit 1 with exactly one 'ctgen: error:' line on stderr that holds every fragment."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ctgen: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------- subprocesses
_RUNNER = r"""
import json, os, sys
try:
    from ctgen.cli import main
    main(sys.argv[1:])
finally:
    with open(os.environ["CTGEN_TEST_MODULES"], "w") as handle:
        json.dump(sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")), handle)
"""


def run_ctgen(args, *, cwd: Path, input: str | None = None, env: dict | None = None, check_torch: bool = True,
              timeout: float = 120):
    """Run ctgen in a fresh interpreter; assert that PyTorch was never imported. Returns CompletedProcess."""
    modules_file = Path(cwd) / ".modules.json"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                               os.environ.get("PYTHONPATH")])),
                   "CTGEN_TEST_MODULES": str(modules_file), **(env or {})}
    command = [sys.executable, "-c", _RUNNER, *map(str, args)] if check_torch else \
        [sys.executable, "-m", "ctgen", *map(str, args)]
    result = subprocess.run(command, cwd=cwd, input=input, env=environment, capture_output=True, text=True,
                            timeout=timeout)
    if check_torch:
        assert json.loads(modules_file.read_text()) == [], "torch was imported"
        modules_file.unlink()
    return result
