"""train.data: slice cache (built once, rebuilt when inputs change), patient split, brain-slice rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from ctgen.io.dicom import patient_key, read_slice, write_series  # noqa: E402
from ctgen.errors import InputError  # noqa: E402
from ctgen.images.preprocess import Grid, to_model  # noqa: E402
from train import data  # noqa: E402


def synthetic_head(size: int, level: float, rng: np.random.Generator, shift=(0.0, 0.0)) -> np.ndarray:
    """HU float32 (size, size): skull ring around brain-range tissue, shrinking towards level ±1."""
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    center_row, center_col = size / 2 + shift[0], size / 2 + shift[1]
    radius = np.hypot((rows - center_row) / (0.42 * size), (cols - center_col) / (0.36 * size))
    scale = np.sqrt(max(1e-3, 1 - level * level))
    hu = np.full((size, size), -1000.0, np.float32)
    hu[radius < scale] = 1200.0  # skull
    inside = radius < 0.88 * scale
    hu[inside] = 35.0 + 6.0 * np.sin(cols[inside] / 5.0)  # grey/white texture
    ventricle = np.hypot(rows - center_row, cols - center_col - 0.1 * size) < 0.06 * size * scale
    hu[ventricle & inside] = 8.0
    return hu + rng.normal(0.0, 4.0, hu.shape).astype(np.float32)


def write_synthetic_study(out: Path, patients: int = 4, slices: int = 6, size: int = 96, seed: int = 0) -> Path:
    """out/P000/0000.dcm ...: one CT series per patient (PatientID SYN-0000 ...), 240 mm field of view."""
    rng = np.random.default_rng(seed)
    for patient in range(patients):
        shift = rng.uniform(-0.04 * size, 0.04 * size, 2)
        levels = np.linspace(-0.8, 0.8, slices)
        volume = np.stack([synthetic_head(size, level, rng, shift) for level in levels])
        name = f"SYN-{patient:04d}"
        write_series(volume, out / f"P{patient:03d}", spacing_mm=240.0 / size, description="synthetic head",
                     derivation="ctgen tests", patient_id=name, patient_name=name)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), patients=4, slices=5)


GRID = Grid(size=64, spacing_mm=240.0 / 64)


def test_split_has_no_overlap_and_covers_every_patient():
    rng = np.random.default_rng(1)
    for seed in range(20):
        patients = [f"p{i}" for i in rng.integers(0, 50, size=300)]
        split = data.split_patients(patients, val_fraction=0.2, seed=seed)
        train, val = set(split["train_patients"]), set(split["val_patients"])
        assert not train & val
        assert train | val == set(patients)
        assert len(val) == max(1, round(0.2 * len(set(patients))))
        train_idx, val_idx = data.split_indices(patients, split)
        assert not {patients[i] for i in train_idx} & {patients[i] for i in val_idx}
        assert len(train_idx) + len(val_idx) == len(patients)


def test_split_is_seeded():
    patients = [f"p{i}" for i in range(30)]
    assert data.split_patients(patients, seed=3) == data.split_patients(list(reversed(patients)), seed=3)
    assert data.split_patients(patients, seed=3) != data.split_patients(patients, seed=4)


def test_split_needs_two_patients_for_validation():
    with pytest.raises(InputError):
        data.split_patients(["a", "a"], val_fraction=0.2)
    assert data.split_patients(["a"], val_fraction=0.0)["val_patients"] == []


def test_brain_fraction_rule():
    rng = np.random.default_rng(0)
    assert data.brain_fraction(synthetic_head(128, 0.0, rng)) > 0.5
    no_skull = synthetic_head(128, 0.0, rng)
    no_skull[no_skull > 300] = 40.0  # soft tissue only, like a slice below the skull base
    assert data.brain_fraction(no_skull) == 0.0
    assert data.brain_fraction(np.full((32, 32), -1000.0)) == 0.0


def test_cache_matches_preprocessing_and_hides_patient_ids(study, tmp_path):
    cache = data.build_cache([study], tmp_path / "cache", GRID, workers=2)
    assert cache.images.shape == (20, 64, 64) and cache.images.dtype == np.float16
    assert cache.info["patients"] == 4 and cache.info["skipped_files"] == 0
    first = cache.records[0]
    item = read_slice(first["file"])
    expected = to_model(item.hu, item.spacing_mm, GRID)
    np.testing.assert_allclose(cache.images[0].astype(np.float32), expected, atol=1e-3)
    manifest = (cache.path / "manifest.jsonl").read_text()
    assert "SYN-" not in manifest and "SYN-" not in (cache.path / "info.json").read_text()
    assert first["patient"] == patient_key("SYN-0000", "")
    assert len({r["patient"] for r in cache.records}) == 4
    assert all(r["position_mm"] is not None for r in cache.records)


def test_cache_is_rebuilt_only_when_inputs_or_grid_change(study, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    first = data.build_cache([study], root, GRID, workers=1)
    calls = []
    original = data._read_one
    monkeypatch.setattr(data, "_read_one", lambda job: calls.append(job) or original(job))

    again = data.build_cache([study], root, GRID, workers=1)
    assert again.path == first.path and calls == []

    other_grid = data.build_cache([study], root, Grid(size=32, spacing_mm=7.5), workers=1)
    assert other_grid.path != first.path and len(calls) == 20

    touched = next(study.rglob("*.dcm"))
    stat = touched.stat()
    try:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        rebuilt = data.build_cache([study], root, GRID, workers=1)
        assert rebuilt.path != first.path and len(calls) == 40
    finally:
        os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert json.loads((first.path / "info.json").read_text())["slices"] == 20


def test_unreadable_files_are_skipped_and_counted(study, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "junk.dcm").write_bytes(b"not dicom at all")
    cache = data.build_cache([study, broken], tmp_path / "cache", GRID, workers=1)
    assert cache.info["skipped_files"] == 1 and cache.info["slices"] == 20
    with pytest.raises(InputError):
        data.build_cache([broken], tmp_path / "cache", GRID, workers=1)


def test_cache_holds_the_selected_slices_only_and_records_the_selection(archive, tmp_path):
    root, expected = archive
    cache = data.build_cache([root], tmp_path / "cache", GRID, workers=1)
    used = {str(root.resolve() / path) for path, reason in expected.items() if reason == "ok"}
    assert {record["file"] for record in cache.records} == used
    frames = [record["frame"] for record in cache.records if record["file"].endswith("enhanced.dcm")]
    assert frames == [0, 1, 2] and cache.info["slices"] == 12
    selection = cache.info["selection"]
    assert selection["reasons"]["duplicate"] == 2 and selection["used_files"] == 10
    assert cache.info["skipped_files"] == 11 and cache.info["failed_files"] == []
    inventory = [json.loads(line) for line in (cache.path / "inventory.jsonl").read_text().splitlines()]
    assert len(inventory) == len(expected) and "ANON" not in (cache.path / "inventory.jsonl").read_text()
    lines = data.describe_selection(cache)
    assert lines[0] == "data: 21 files; training on 10 files = 12 slices of 3 patients (split by auto)"
    assert lines[1].startswith("skipped: 1 not-dicom, 1 truncated") and "2 duplicate" in lines[1]
    assert lines[2].startswith("warning: patient ") and "split into 2 patients" in lines[2]


def test_split_by_groups_the_cache_by_patient_study_or_both_rules(archive, tmp_path):
    root, _ = archive
    auto = data.build_cache([root], tmp_path / "cache", GRID, workers=1)
    assert len(set(auto.patients)) == 3 and auto.split_by == "auto"
    together = data.build_cache([root], tmp_path / "cache", GRID, workers=1, split_by="patient")
    assert together.path == auto.path  # one cache serves every mode
    assert len(set(together.patients)) == 2 and "kept as one patient" in data.describe_selection(together)[2]
    assert len(set(data.open_cache(auto.path, "study").patients)) == 3
    a_and_b = {p for p, r in zip(auto.patients, auto.records) if "/A/" in r["file"] or "/B/" in r["file"]}
    split = data.split_patients(auto.patients, val_fraction=0.34, seed=0)
    assert len(a_and_b) == 2 and not set(split["train_patients"]) & set(split["val_patients"])
    with pytest.raises(InputError, match="--split-by must be one of"):
        data.open_cache(auto.path, "series")


def test_the_cache_fingerprint_covers_every_reading_module_by_folder(tmp_path, monkeypatch):
    """A module added to ctgen/io, ctgen/images or ctgen/factors (at any depth) changes the fingerprint without being
    listed anywhere; a command module does not."""
    import ctgen
    from train.data import _preprocess_fingerprint

    root = tmp_path / "ctgen"
    for name in ("defaults.py", "io/sources.py", "images/preprocess.py", "factors/image.py", "cli/run.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    monkeypatch.setattr(ctgen, "__file__", str(root / "__init__.py"))
    before = _preprocess_fingerprint()
    (root / "cli" / "run.py").write_text("# changed\n")
    assert _preprocess_fingerprint() == before
    (root / "io" / "dicom").mkdir()
    (root / "io" / "dicom" / "new_reader.py").write_text("")
    added = _preprocess_fingerprint()
    assert added != before
    (root / "defaults.py").write_text("BRAIN_WINDOW = (40, 80)\n")
    assert _preprocess_fingerprint() != added
