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


def test_a_truncated_file_is_skipped_with_one_warning_and_a_count(tiny_model_copy, tmp_path, capsys):
    from export.prior import main

    data = tmp_path / "study"
    _study(data)
    good = (data / "P0" / "0000.dcm").read_bytes()
    (data / "P0" / "cut.dcm").write_bytes(good[: len(good) - 3000])

    assert main([str(tiny_model_copy), "--data", str(data), "--components", "1,2"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "cut.dcm" in warnings[0] and "truncated" in warnings[0], err
    assert warnings[1] == "warning: 1 files skipped"
    card = json.loads((tiny_model_copy / "model.json").read_text())
    fitted = card["prior"]["fitted_on"]
    assert fitted["train_slices"] + fitted["val_slices"] == 12 and fitted["skipped_files"] == 1
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
