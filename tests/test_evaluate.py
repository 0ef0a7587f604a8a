"""ctgen.evaluation.evaluate and `ctgen evaluate` on the tiny exported model and a 3-patient phantom study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctgen.evaluation.report import REPORT_FILES, kl_bar_chart
from ctgen.io.dicom import patient_key
from ctgen.evaluation.evaluate import card_metrics, evaluate_model, load_factors
from ctgen.runtime.model import load_model
from conftest import invoke, one_error_line, run_ctgen

SECTIONS = ("model", "study", "reconstruction", "activity", "disentanglement", "memorisation", "real_slices",
            "interpretation")


@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Path:
    """3 phantom patients x 6 slices, with factors.csv."""
    from train.phantom import generate_study

    folder = tmp_path_factory.mktemp("phantom")
    generate_study(folder, 3, 6, 0, workers=1, contact_sheet=False)
    return folder


@pytest.fixture(scope="session")
def split(study, tmp_path_factory) -> Path:
    """A training run's split.json (hashed patient ids, as train/data.py writes them): patient 3 held out."""
    path = tmp_path_factory.mktemp("run") / "split.json"
    keys = [patient_key(f"PHANTOM-{index:04d}") for index in (1, 2, 3)]
    path.write_text(json.dumps({"seed": 0, "val_fraction": 0.34, "train_patients": keys[:2], "val_patients": keys[2:]}))
    return path


@pytest.fixture(scope="session")
def report_dir(tiny_model_dir, study, split, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "report"
    result = invoke("evaluate", study, "--split", split, "--model", tiny_model_dir, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["command"] == "evaluate" and summary["metrics"]["eval_active_units"] >= 0
    return out


def test_report_folder_has_every_file(report_dir):
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(REPORT_FILES)
    for name in REPORT_FILES:
        if name.endswith(".png"):
            with Image.open(report_dir / name) as image:
                image.verify()
                assert image.format == "PNG"
    assert not [p for p in report_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_metrics_json_sections(report_dir, study):
    report = json.loads((report_dir / "metrics.json").read_text())
    for section in SECTIONS:
        assert section in report, section
    assert report["study"]["evaluated"] == 18 and report["study"]["heldout_slices"] == 6
    recon = report["reconstruction"]
    assert recon["set"] == "held-out patients" and recon["n_images"] == 6
    assert recon["mae_hu"] > 0 and 0 < recon["psnr_db"] <= 100 and -1 <= recon["ssim"] <= 1
    activity = report["activity"]
    assert len(activity["kl_per_unit"]) == 8 and sorted(activity["units_by_kl"]) == list(range(8))
    assert 0 <= activity["active_units"] <= 8 and 0 <= activity["active_units_by_variance"] <= 8
    scores = report["disentanglement"]
    for key in ("mig", "beta_vae", "factor_vae", "dci_disentanglement", "dci_completeness", "sap"):
        assert np.isfinite(scores[key])
    used = set(scores["factors_used"])
    assert {"level", "rotation_deg", "scale_x"} <= used
    assert not used & {"level_start", "level_end", "slice_index", "z_mm", "contrast", "patient_id", "file"}
    assert set(scores["units"]) == used
    memo = report["memorisation"]
    assert memo["n_train"] == 12 and memo["n_heldout"] == 6 and 0 <= memo["fraction_copied"] <= 1
    real = report["real_slices"]["slices"]
    assert [row["file"] for row in real] == ["CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"]
    assert all("mae_hu" in row for row in real), real
    assert "PHANTOM-0001" not in (report_dir / "metrics.json").read_text()  # no patient ids written


def test_sharpness_section_figure_and_markdown(report_dir):
    """issue 26: band power ratios of reconstructions and samples, LFD, anatomy kept, the spectra figure."""
    section = json.loads((report_dir / "metrics.json").read_text())["sharpness"]
    assert set(section["band_power_ratio"]) == {"reconstructions", "samples_standard"}
    for ratios in section["band_power_ratio"].values():
        assert set(ratios) == {"0.125-0.25", "0.25-0.5"} and all(value >= 0 for value in ratios.values())
    assert section["log_frequency_distance"] > 0 and section["n_originals"] == 6
    assert set(section["period_two_peak"]) == {"originals", "reconstructions", "samples_standard"}
    assert section["anatomy"]["n_slices"] == 6 and section["anatomy"]["masks"] == "HU thresholds on the original"
    text = (report_dir / "report.md").read_text()
    assert "## Sharpness and anatomy kept" in text and "![spectra.png](spectra.png)" in text
    with Image.open(report_dir / "spectra.png") as image:
        assert image.width > 300


def test_unit_factors_name_valid_units(report_dir):
    report = json.loads((report_dir / "metrics.json").read_text())
    card = card_metrics(report)
    assert card["recon_mae_hu"] == report["reconstruction"]["mae_hu"] and "disentanglement" in card
    for unit, factor in card["unit_factors"].items():
        assert 0 <= int(unit) < 8 and factor in report["disentanglement"]["factors_used"]
    for entry in report["disentanglement"]["units"].values():
        assert 0 <= entry["unit"] < 8 and 0 <= entry["nmi"] <= 1 + 1e-9
    json.dumps(card, allow_nan=False)


def test_report_md_has_tables_and_readings(report_dir):
    text = (report_dir / "report.md").read_text()
    for heading in ("## Reconstruction", "## Latent activity", "## Disentanglement", "### Disentanglement: factor → unit",
                    "## Memorisation", "## Real CT slices"):
        assert heading in text
    report = json.loads((report_dir / "metrics.json").read_text())
    assert f"{report['reconstruction']['mae_hu']:.1f} HU" in text  # the readings quote the measured numbers
    assert "![traversal.png](traversal.png)" in text


def test_existing_out_needs_force(report_dir, tiny_model_dir, study, split):
    before = (report_dir / "metrics.json").read_bytes()
    result = invoke("evaluate", study, "--split", split, "-m", tiny_model_dir, "--out", report_dir, "--no-real")
    one_error_line(result, "already exists", "--force")
    assert (report_dir / "metrics.json").read_bytes() == before


def test_force_replaces_report_and_same_seed_same_bytes(tiny_model_dir, study, split, tmp_path):
    out = tmp_path / "again"
    args = ["evaluate", study, "--split", split, "-m", tiny_model_dir, "--no-real", "--max-slices", 12, "-q"]
    assert invoke(*args, "--out", out).exit_code == 0
    first = (out / "metrics.json").read_bytes()
    (out / "stale.txt").write_text("old report")
    result = invoke(*args, "--out", out, "--force")
    assert result.exit_code == 0, result.stderr
    assert (out / "metrics.json").read_bytes() == first
    assert not (out / "stale.txt").exists() and not (out / "real_slices.png").exists()
    assert "real_slices" not in json.loads(first)
    other = tmp_path / "seed1"
    assert invoke(*args, "--out", other, "--seed", 1).exit_code == 0
    assert (other / "metrics.json").read_bytes() != first


def test_force_refuses_a_folder_that_is_not_a_report(tiny_model_dir, study, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.tex").write_text("precious")
    result = invoke("evaluate", study, "-m", tiny_model_dir, "--out", keep, "--force", "--no-real")
    one_error_line(result, "not an evaluation report")
    assert (keep / "thesis.tex").read_text() == "precious"


def test_without_factors_table_the_headers_give_the_factors(tiny_model_dir, study, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(study, bare, ignore=shutil.ignore_patterns("factors.csv"))
    out = tmp_path / "report"
    result = invoke("evaluate", bare, "-m", tiny_model_dir, "--out", out, "--no-real", "--max-slices", 12)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert report["study"]["factors"] == "DICOM headers" and report["reconstruction"]["set"] == "all slices"
    assert "position_in_series" in report["disentanglement"]["factors_used"]
    assert report["memorisation"] == {"skipped": "needs --split (the training patients)"}
    text = (out / "report.md").read_text()
    assert "## Disentanglement" in text and "Not checked" in text
    assert "unit_labels" in card_metrics(report)  # real archives get unit names from their headers


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_bad_study_dir_is_one_line_error(tiny_model_dir, tmp_path, make):
    target = tmp_path / "study"
    if make == "file":
        target.write_text("not a folder")
    elif make == "empty":
        target.mkdir()
    result = invoke("evaluate", target, "-m", tiny_model_dir, "--out", tmp_path / "out")
    one_error_line(result, str(target))
    assert not (tmp_path / "out").exists()


def test_split_that_holds_out_nobody_is_an_error(tiny_model_dir, study, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train_patients": [patient_key(f"PHANTOM-{i:04d}") for i in (1, 2, 3)],
                                 "val_patients": []}))
    result = invoke("evaluate", study, "--split", split, "-m", tiny_model_dir, "--out", tmp_path / "out")
    one_error_line(result, "nothing is held out")


def test_library_entry_point_and_pictures(tiny_model_dir, study, split):
    pictures: dict = {}
    report = evaluate_model(load_model(tiny_model_dir), study, split=split, max_slices=10, real=False, seed=3,
                            pictures=pictures)
    assert report["study"]["evaluated"] == 10 and report["study"]["heldout_slices"] == 5  # half held out
    assert report["memorisation"]["n_train"] == 12  # every training slice, not only the 5 encoded
    assert pictures["samples"].shape == (32, 64, 64) and pictures["samples"].dtype == np.float32
    assert pictures["reconstructions"].shape == (5, 3, 64, 64) and len(pictures["reconstructions_labels"]) == 5
    assert pictures["real_slices"] is None and pictures["traversal_start"].shape == (8,)
    json.dumps(report, allow_nan=False)


def test_load_factors_keeps_continuous_columns(study):
    table = load_factors(study / "factors.csv")
    assert len(table["files"]) == 18 and table["values"].shape == (18, len(table["names"]))
    assert "level" in table["names"] and "contrast" not in table["names"]
    assert table["skipped"]["level_start"] == "bookkeeping" and table["skipped"]["z_mm"] == "bookkeeping"


def test_kl_bar_chart_is_deterministic():
    kl = [0.5, 3.0, 0.001, 1.2, 0.0, 2.2, 0.02, 0.7]
    first, second = kl_bar_chart(kl), kl_bar_chart(kl)
    assert first.mode == "RGB" and first.tobytes() == second.tobytes()
    pixels = np.asarray(first)
    # active units in the first colour, the inactive grey, the threshold line in the second colour
    for colour in ((0x28, 0x5A, 0xAA), (0xAA, 0xAA, 0xAA), (0xC8, 0x3C, 0x28)):
        assert (pixels == colour).all(axis=-1).any(), colour
    assert kl_bar_chart(np.zeros(500)).size[0] > 300


def test_cli_subprocess_keeps_torch_out(tiny_model_dir, study, tmp_path):
    result = run_ctgen(["evaluate", study, "-m", tiny_model_dir, "--no-real", "--max-slices", 10, "--out",
                        tmp_path / "report"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "reading 10 images" in result.stderr


def test_attach_puts_the_figures_into_the_card_and_keeps_checksums(report_dir, tiny_model_copy):
    from export.attach import main as attach

    assert attach([str(tiny_model_copy), str(report_dir), "--note", "beta=1: the plain ELBO"]) == 0
    card = json.loads((tiny_model_copy / "model.json").read_text())
    report = json.loads((report_dir / "metrics.json").read_text())
    assert card["metrics"]["recon_mae_hu"] == pytest.approx(report["reconstruction"]["mae_hu"])
    assert card["evaluation"]["note"] == "beta=1: the plain ELBO"
    assert load_model(tiny_model_copy).card.units_by_kl == list(range(8))  # checksums still hold
    # issue 24 item 9: the card keeps the KL the export ordered the units by; the evaluation's sits beside it
    assert card["metrics"]["units_by_kl"] == list(range(8)) and card["metrics"]["kl_per_unit"][0] == 3.0
    assert card["metrics"]["eval_kl_per_unit"] == report["activity"]["kl_per_unit"]
    units = invoke("units", "-m", tiny_model_copy, "--json")
    listing = json.loads(units.stdout)
    assert [row["rank"] for row in listing["units"]] == [row["unit"] + 1 for row in listing["units"]]
    assert [row["eval_kl"] for row in listing["units"]] == report["activity"]["kl_per_unit"]
    assert listing["sets"]["kl"] == "the training run's validation patients"
    assert listing["sets"]["eval_kl"].startswith("18 evaluated slices of ")
    table = invoke("units", "-m", tiny_model_copy)
    assert "on the training run's validation patients" in table.stdout and "eval KL" in table.stdout
    assert "eval KL: on 18 evaluated slices" in table.stderr


def test_attach_without_a_report_is_one_line_error(tiny_model_copy, tmp_path, capsys):
    from export.attach import main as attach

    assert attach([str(tiny_model_copy), str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_dense_set_names_every_active_unit(tiny_model_dir, study):
    report = evaluate_model(load_model(tiny_model_dir), study, max_slices=12, real=False, dense=study, max_dense=12)
    dense = report["disentanglement_dense"]
    assert dense["set"].startswith("dense set") and dense["n_slices"] == 12
    assert set(dense["unit_labels"]) <= {str(u) for u in range(8)}
    for entry in dense["unit_labels"].values():
        assert entry["factor"] in dense["factors_used"] and 0.0 <= entry["nmi"] <= 1.0
    figures = card_metrics(report)
    assert figures["disentanglement"]["set"] == dense["set"] and "disentanglement_heldout" in figures
    assert figures["unit_labels"] == dense["unit_labels"]


def test_traverse_accepts_factor_names(tiny_model_copy, tmp_path, monkeypatch):
    from ctgen.api import load_generator
    from ctgen.errors import ArgumentError
    from export.card import update_card

    update_card(tiny_model_copy, lambda card: card["metrics"].update(unit_factors={"2": "level"}, unit_labels={
        "2": {"factor": "level", "nmi": 0.6}, "0": {"factor": "rotation_deg", "nmi": 0.3}}))
    generator = load_generator(tiny_model_copy)
    assert generator.units("level,rotation_deg") == [2, 0]
    with pytest.raises(ArgumentError, match="'atrophy_mm': no unit of model tiny carries it"):
        generator.units("atrophy_mm")
    with pytest.raises(ArgumentError, match=r"'levels': no unit of model tiny carries it \(did you mean level\?\)"):
        generator.units("levels")
    monkeypatch.chdir(tmp_path)
    result = invoke("traverse", "--units", "level", "-m", tiny_model_copy, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["units"] == [2]


def test_archives_without_a_factors_table_are_scored_on_header_factors(tiny_model_dir, tmp_path):
    from conftest import write_heads
    from ctgen.evaluation.evaluate import header_factors

    folder = tmp_path / "archive"
    files = write_heads(folder, 12)
    table = header_factors(files)
    assert table["names"] == ["position_in_series"] and table["skipped"]["kvp"] == "not finite"
    assert sorted(table["values"][:, 0]) == pytest.approx(np.linspace(0, 1, 12))
    report = evaluate_model(load_model(tiny_model_dir), folder, max_slices=12, real=False)
    assert report["study"]["factors"] == "DICOM headers"
    assert report["disentanglement"]["factors_used"] == ["position_in_series"]


def test_patient_level_factors_are_judged_against_patient_identity(report_dir):
    # issue 24 item 7: with few patients every patient-level factor is a relabelling of patient identity
    report = json.loads((report_dir / "metrics.json").read_text())
    scores = report["disentanglement"]
    assert scores["n_patients"] == 3
    by_patient = {name for name, entry in scores["units"].items() if entry["patient_level"]}
    assert by_patient and "level" not in by_patient  # the level varies within a patient
    for name in by_patient:
        assert scores["units"][name]["patient_nmi"] == pytest.approx(1.0)
        assert name not in scores["unit_factors"].values()
    reading = report["interpretation"]["unit_factors"]
    assert "with 3 patients, patient-level factors cannot be told apart from patient identity" in reading
    assert "patient identity" in (report_dir / "report.md").read_text()
