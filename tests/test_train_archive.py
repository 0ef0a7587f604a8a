"""python -m train on a PACS-like archive: it prints what it selected, trains on the usable axial slices only,
and never puts two people behind one anonymised ID into one patient (or says so)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


def _train(archive_root: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "train", "--data", str(archive_root), "--out", str(out), "--cache", str(cache),
               "--image-size", "64", "--latent", "4", "--width", "8", "--epochs", "1", "--batch-size", "4",
               "--val-fraction", "0.34", "--workers", "1", "--quiet", "--no-tensorboard", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_training_uses_the_ok_slices_prints_the_selection_and_splits_the_anonymised_pair(archive, tmp_path):
    root, expected = archive
    result = _train(root, tmp_path / "run", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "data: 21 files; training on 10 files = 12 slices of 3 patients (split by auto)" in lines
    assert any(line.startswith("skipped: 1 not-dicom, 1 truncated, 1 no-image, 1 not-ct, 1 colour, "
                               "1 secondary-capture, 1 localizer, 2 not-axial, 2 duplicate") for line in lines)
    assert any("one PatientID holds 2 studies" in line and "split into 2 patients" in line for line in lines)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train_patients"]) + len(split["val_patients"]) == 3
    assert split["train_slices"] + split["val_slices"] == 12  # the ok slices, every frame of the enhanced CT
    checkpoint_data = json.loads((tmp_path / "run" / "config.json").read_text())
    assert checkpoint_data["train"]["data"] == [str(root)]

    together = _train(root, tmp_path / "run2", tmp_path / "cache", "--split-by", "patient")
    assert together.returncode == 0, together.stderr
    assert "data: 21 files; training on 10 files = 12 slices of 2 patients (split by patient)" in together.stderr
    assert "kept as one patient" in together.stderr
    split = json.loads((tmp_path / "run2" / "split.json").read_text())
    assert len(split["train_patients"]) + len(split["val_patients"]) == 2
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["train"]["split_by"] == "patient"

    # --resume takes the split rule from the run, as it takes the data: without --split-by the run goes on
    # with the same patients (it used to fall back to "auto", find 3 patients and refuse to resume)
    resumed = subprocess.run([sys.executable, "-m", "train", "--out", str(tmp_path / "run2"), "--resume", "--epochs", "2",
                              "--quiet"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "run2" / "split.json").read_text()) == split
