"""studies.study / studies.report: the seed-study grid, its answers, and a tiny study end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("scipy")

from studies.study import grid_points, run_study  # noqa: E402
from ctgen.images.charts import line_chart  # noqa: E402
from studies.report import claims  # noqa: E402

SETTINGS = {"latents": [10, 20, 50, 100, 500], "betas": [1.0, 20.0, 50.0, 200.0], "at_beta": 1.0, "at_latent": 50}


def test_grid_points_cover_both_sweeps_once():
    points = grid_points([10, 50, 500], [1.0, 20.0], at_beta=1.0, at_latent=50)
    assert points == [(10, 1.0), (50, 1.0), (500, 1.0), (50, 20.0)]


def _row(latent, beta, val_loss, mae=10.0, mig=0.1, units=None):
    return {"run": f"latent{latent}_beta{beta:g}", "latent": latent, "beta": beta, "val_loss": val_loss,
            "mae_hu": mae, "ssim": 0.8, "active_units": 5, "mig": mig, "dci_disentanglement": mig,
            "factor_vae": mig, "beta_vae": mig, "sap": mig, "unit_factors": units or {}, "val_loss_jitter": latent / 1000}


def test_claims_are_answered_from_the_numbers():
    rows = [_row(10, 1.0, 130.0), _row(20, 1.0, 100.5), _row(50, 1.0, 100.0, mig=0.05), _row(100, 1.0, 101.0),
            _row(500, 1.0, 100.4), _row(50, 20.0, 300.0, mae=20.0, mig=0.2, units={"3": "rotation_deg"}),
            _row(50, 50.0, 500.0, mae=30.0, mig=0.3), _row(50, 200.0, 900.0, mae=60.0, mig=0.25)]
    answers = claims(rows, SETTINGS)
    latent = " ".join(answers["Validation loss vs latent size"])
    assert "Best validation loss at latent size 50" in latent
    assert "span 1.0% of validation loss: equal" in latent
    assert "Latent size 10: +30.0%" in latent and "worse, as the seed study found" in latent
    assert "Latent size 500: +0.4%" in latent and "not distinguishably worse here" in latent
    assert "last three epochs moves by 5.0% (median over these runs); runs closer than 5.0%" in latent
    recon = " ".join(answers["Reconstruction vs β"])
    assert "β 200: 60.0 HU" in recon and "worsens" in recon and "6.0x" in recon
    disentangle = " ".join(answers["Disentanglement vs β"])
    assert "MIG is not monotone in β" in disentangle and "mig: 0.05, 0.2, 0.3, 0.25 (best at β 50)" in disentangle
    assert "β 20: u3 → rotation_deg." in answers["Which units encode which factors"]


def test_line_chart_draws_every_series():
    image = line_chart({"a": [(1, 0.0), (10, 1.0)], "b": [(1, 1.0), (10, 0.0)]}, title="t", x_label="x")
    colours = {colour for _, colour in image.getcolors(1 << 20)}
    assert (0x28, 0x5A, 0xAA) in colours and (0xC8, 0x3C, 0x28) in colours  # both series drawn


def test_tiny_study_end_to_end(tmp_path):
    from tests.test_train_loop import tiny

    from train.phantom import generate_study

    generate_study(tmp_path / "study", patients=4, slices=6, seed=0, workers=1, contact_sheet=False)
    study = tmp_path / "study"
    base = replace(tiny(study, tmp_path / "cache", tmp_path / "runs", width=4, epochs=1), latent=4)
    report = tmp_path / "report"
    options = dict(latents=[4], betas=[1.0, 8.0], at_beta=1.0, at_latent=4, max_slices=24, command="test")
    rows = run_study(base, str(study), report, **options)
    assert [(r["latent"], r["beta"]) for r in rows] == [(4, 1.0), (4, 8.0)]
    assert all(r["epochs"] == 1 and r["mae_hu"] > 0 and r["mig"] is not None for r in rows)
    text = (report / "report.md").read_text()
    assert "| latent | β |" in text and "## Reconstruction vs β" in text and "![beta.png](beta.png)" in text
    assert {"beta.png", "traversal_beta1.png", "traversal_beta8.png", "study.json"} <= {p.name for p in report.iterdir()}
    saved = json.loads((report / "study.json").read_text())
    assert saved["settings"]["betas"] == [1.0, 8.0] and len(saved["runs"]) == 2
    checkpoint = tmp_path / "runs" / "latent4_beta8" / "checkpoint_best.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = run_study(base, str(study), report, **options)  # finished runs are read, not trained or scored again
    assert checkpoint.stat().st_mtime_ns == stamp and again == rows
    assert Path(report / "report.md").read_text() == text


def _scored(beta, mae, scores, ratio):
    return {"beta": beta, "mae_hu": mae, "memorisation_ratio": ratio,
            **dict(zip(("mig", "dci_disentanglement", "factor_vae", "beta_vae", "sap"), scores))}


def test_choose_beta_needs_usable_reconstruction_then_separation_then_realism():
    from studies.report import choose_beta

    rows = [_scored(1.0, 10.0, [0.1] * 5, 2.0), _scored(2.0, 12.0, [0.2] * 5, 1.8),
            _scored(4.0, 12.4, [0.205] * 5, 1.2), _scored(8.0, 13.0, [0.5] * 5, 1.0)]
    chosen, why = choose_beta(rows)
    assert chosen["beta"] == 4.0  # 8 reconstructs too badly; 2 and 4 tie on separation, 4 has realer samples
    assert "β 8 excluded" in why and "tied within 0.01 with β 2" in why
    assert choose_beta(rows[:2])[0]["beta"] == 2.0


def _objective_row(run, mae, mean, objective="betavae"):
    scores = {f"dense_{key}": mean for key in ("mig", "dci_disentanglement", "factor_vae", "beta_vae", "sap")}
    return {"run": run, "objective": objective, "data": "data/phantom100", "epochs": 6, "mae_hu_window": mae,
            "ssim": 0.7, "active_units": 8, **scores, "dense_mean": mean, "named_units": {}, "sample_precision": 0.8}


def test_objective_rule_keeps_reconstruction_and_takes_the_best_mean():
    from studies.objectives import choose

    rows = [_objective_row("betavae_beta1", 20.0, 0.20), _objective_row("tcvae_tc8", 26.0, 0.60, "tcvae"),
            _objective_row("pairs_beta4", 24.0, 0.40, "pairs"), _objective_row("pairs_beta1", 21.0, 0.395, "pairs")]
    chosen, why = choose(rows)
    assert chosen["run"] == "pairs_beta1"  # tcvae reconstructs > 1.25x worse; pairs β 1 ties β 4 with less MAE
    assert "excluded by it: tcvae_tc8" in why and "tied within 0.01: pairs_beta4, pairs_beta1" in why


def test_objective_report_has_the_table_rule_and_chart(tmp_path):
    from studies.objectives import write_report

    rows = [_objective_row("betavae_beta1", 20.0, 0.20), _objective_row("pairs_beta4", 22.0, 0.40, "pairs")]
    settings = {"data": "data/phantom100", "dense_train": None, "dense": "data/dense", "image_size": 64,
                "width": 16, "latent": 10, "epochs": 6, "hu_map": "ct", "batch_size": 64, "seed": 0,
                "max_slices": 1000}
    write_report(rows, tmp_path, command="python -m studies.objectives ...", settings=settings)
    text = (tmp_path / "report.md").read_text()
    assert "| pairs_beta4 | pairs |" in text and "## The rule" in text and "chosen pairs_beta4" in text
    assert (tmp_path / "scores_vs_mae.png").stat().st_size > 1000
