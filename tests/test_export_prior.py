"""export.prior: the fitted sampling prior, from the slices that scan selects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import head_hu

pytest.importorskip("sklearn")


def _study(root, patients: int = 4, per_patient: int = 3) -> None:
    """``patients`` one-series patients of 64-px heads under ``root`` (P0/, P1/, …)."""
    from ctgen.io.dicom import write_series

    for patient in range(patients):
        hu = np.stack([head_hu(64, shift=1.5 * index, seed=10 * patient + index) for index in range(per_patient)])
        write_series(hu, root / f"P{patient}", spacing_mm=3.5, description="prior test", derivation="tests",
                     patient_id=f"PRIOR-{patient}", patient_name="PRIOR")


def test_files_scan_leaves_out_are_counted_by_reason_in_one_note(tiny_model_copy, tmp_path, capsys):
    """As the commands say it of a folder: one note with counts by reason (not a warning per file: an archive
    holds thousands of reports and localizers), the counts in the card."""
    from export.prior import main

    data = tmp_path / "study"
    _study(data)
    good = (data / "P0" / "0000.dcm").read_bytes()
    (data / "P0" / "cut.dcm").write_bytes(good[: len(good) - 3000])
    for index in range(3):
        (data / f"notes_{index}.txt").write_text("not a slice\n")

    assert main([str(tiny_model_copy), "--data", str(data), "--components", "1,2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert not [line for line in err if line.startswith("warning:")], err
    assert f"ctgen: note: {data}/: 12 of 16 files used (scan's selection; left out: 3 not-dicom, 1 truncated)" in err
    card = json.loads((tiny_model_copy / "model.json").read_text())
    fitted = card["prior"]["fitted_on"]
    assert fitted["train_slices"] + fitted["val_slices"] == 12 and fitted["skipped_files"] == 4
    assert fitted["left_out"] == {"not-dicom": 3, "truncated": 1}
    assert (tiny_model_copy / "prior.npz").is_file()


def test_a_selected_file_that_cannot_be_read_is_skipped(tiny_model_copy, tmp_path, monkeypatch):
    """A file scan passes but the reader refuses (its pixels are broken past the header) is left out too."""
    from ctgen.api import Generator
    from ctgen.errors import DicomError
    from export.prior import fit_prior

    data = tmp_path / "study"
    _study(data)
    broken = str((data / "P1" / "0001.dcm").resolve())
    load = Generator._load_or_error

    def failing(self, name, path, indices, with_hu):
        if str(path) == broken:
            return [(name, DicomError(path, "pixel data cannot be decoded"))]
        return load(self, name, path, indices, with_hu)

    monkeypatch.setattr(Generator, "_load_or_error", failing)
    skipped: list[str] = []
    section = fit_prior(tiny_model_copy, data, components=(1,), skipped=skipped)
    assert skipped == [f"{broken}: pixel data cannot be decoded"]
    assert section["fitted_on"]["train_slices"] + section["fitted_on"]["val_slices"] == 11
