"""ctgen.scan and `ctgen scan`: every file of a PACS-like archive gets its reason code, patient keys that never
merge two people or reveal an ID, and the outputs (table, --json, --out)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest

from conftest import invoke, one_error_line, run_ctgen
from ctgen.dicom import patient_key, write_series
from ctgen.errors import InputError
from ctgen.scan import REASONS, axial_tilt_deg, scan


def _relative(root: Path, path: str) -> str:
    return str(Path(path).relative_to(root.resolve()))


def test_every_file_gets_its_reason(archive):
    root, expected = archive
    inventory = scan([root])
    found = {_relative(root, entry.path): entry.reason for entry in inventory.entries}
    assert found == expected
    assert set(found.values()) == set(REASONS) - {"unreadable", "invalid"}  # those two: tests below
    by_name = {_relative(root, entry.path): entry for entry in inventory.entries}
    assert by_name["C/enhanced.dcm"].frames == 3  # multi-frame files count per frame
    assert "tilted 20.0°" in by_name["A/extra/tilted.dcm"].detail
    assert by_name["A/extra/matrix1024.dcm"].frames == 1
    assert by_name["A/copy/IM0001"].detail.endswith("A/ax/0000.dcm")  # the first copy is kept
    summary = inventory.summary()
    assert summary["used_files"] == 10 and summary["used_images"] == 12
    assert summary["reasons"]["duplicate"] == 2 and summary["reasons"]["not-axial"] == 2


def test_two_people_behind_one_anonymised_id_are_split_apart_with_a_warning(archive):
    root, _ = archive
    auto = scan([root])
    keys = {folder: {e.patient for e in auto.used if _relative(root, e.path).startswith(folder)} for folder in "ABC"}
    assert all(len(k) == 1 for k in keys.values()) and len(set.union(*keys.values())) == 3
    assert len(auto.warnings) == 1 and "2 different birth dates or sexes" in auto.warnings[0]
    assert patient_key("ANON") in auto.warnings[0] and "ANON" not in auto.warnings[0].replace(patient_key("ANON"), "")
    together = scan([root], split_by="patient")
    keys = {e.patient for e in together.used if _relative(root, e.path)[0] in "AB"}
    assert keys == {patient_key("ANON")} and "kept as one patient" in together.warnings[0]
    by_study = scan([root], split_by="study")
    assert all(e.patient == e.study for e in by_study.used)


def test_empty_patient_id_falls_back_to_the_study(tmp_path, archive):
    hu = pydicom.dcmread(archive[0] / "A" / "ax" / "0000.dcm").pixel_array[None] - 1024.0
    for folder in ("s1", "s2"):
        for path in write_series(hu, tmp_path / folder, spacing_mm=3.5, description="x", derivation="test",
                                 patient_id=""):
            assert pydicom.dcmread(path).PatientID == ""
    inventory = scan([tmp_path])
    assert len({entry.patient for entry in inventory.used}) == 2  # two studies, two patients
    assert len({entry.study for entry in inventory.used}) == 2


def test_axial_tilt():
    assert axial_tilt_deg([1, 0, 0, 0, 1, 0]) == 0
    assert axial_tilt_deg([1, 0, 0, 0, 0, -1]) == pytest.approx(90)
    assert axial_tilt_deg([0, 1, 0, 0, 0, -1]) == pytest.approx(90)
    assert axial_tilt_deg([1, 0, 0, 0, 0.94, 0.342]) == pytest.approx(20, abs=0.1)


def test_scan_json_names_every_skipped_file_with_its_reason(archive, workdir):
    root, expected = archive
    result = invoke("scan", root, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    skipped = {_relative(root, item["path"]): item["reason"] for item in summary["skipped"]}
    assert skipped == {path: reason for path, reason in expected.items() if reason != "ok"}
    assert summary["used_files"] == 10 and summary["patients"] == 3 and summary["reasons"]["ok"] == 10
    assert "archive by series" in result.stderr and "skipped: " in result.stderr
    assert "ctgen: warning: patient " in result.stderr
    assert "ANON" not in result.stdout + result.stderr  # neither the ID nor a name


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_out_writes_one_row_per_file_without_identifiers(archive, workdir, suffix):
    root, expected = archive
    result = invoke("scan", root, "--out", f"inventory{suffix}", "--quiet")
    assert result.exit_code == 0, result.stderr
    text = (workdir / f"inventory{suffix}").read_text()
    rows = list(csv.DictReader(text.splitlines())) if suffix == ".csv" else [json.loads(x) for x in text.splitlines()]
    assert {_relative(root, row["path"]): row["reason"] for row in rows} == expected
    assert {"patient", "study", "series", "frames", "detail"} <= set(rows[0])
    assert "ANON" not in text and "19500101" not in text
    again = invoke("scan", root, "--out", f"inventory{suffix}", "--quiet")
    one_error_line(again, "already exists")


def test_scan_usage_and_input_errors(workdir):
    one_error_line(invoke("scan", workdir / "missing"), "no such file or folder")
    (workdir / "empty").mkdir()
    one_error_line(invoke("scan", workdir / "empty"), "no files found")
    assert invoke("scan", workdir, "--split-by", "series").exit_code == 2
    assert invoke("scan", workdir, "--max-tilt", "120").exit_code == 2
    with pytest.raises(InputError):
        scan([workdir], split_by="series")


def test_scan_runs_without_torch(archive, tmp_path):
    result = run_ctgen(["scan", archive[0], "--json", "--quiet"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["used_images"] == 12
