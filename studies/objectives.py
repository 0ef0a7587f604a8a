"""The study's objective axis: every objective at two strengths with everything else shared, each run exported
and scored, one report, and the rule that picks the shipped model's objective.

    python -m studies.objectives --data data/phantom100 --dense-train data/dense1400 \\
        --dense data/dense_eval1000 --out runs/objectives --report reports/objectives \\
        --image-size 64 --width 16 --latent 10 --epochs 6 --hu-map ct

Runs (``GRID``): betavae β 1 and 4, tcvae with TC weight 4 and 8, factorvae γ 10 and 30, pairs β 1 and 4; and
the dense-coverage variant (``DENSE``): betavae β 4 and pairs β 4 trained on ``--dense-train`` (many patients
with two slices each, the same number of slices as ``--data``). Every run has the same budget in images seen:
``pairs`` steps over pairs, two slices per item, so it gets half the epochs. Each run is exported to RUN/model
and scored by ``ctgen evaluate`` on ``--data`` (held-out patients of its split: reconstruction) and on
``--dense`` (unseen patients at random levels: disentanglement and unit names) into RUN/report.

The rule (``choose``), fixed before any of these runs was scored: among the runs whose held-out MAE inside the
head (both images clipped to -50..250 HU, ``mae_hu_window``) is at most 1.25 x that of betavae β 1, the highest
mean of the five scores on the dense set (MIG, DCI disentanglement, FactorVAE, β-VAE, SAP); scores within 0.01
count as a tie, broken by the lower MAE.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from studies.report import MAE_TOLERANCE, SCORE_TIE, SCORES

__all__ = ["DENSE", "GRID", "choose", "run_objectives"]

# (run name, objective, the TrainConfig fields that set its strength)
GRID = [
    ("betavae_beta1", "betavae", {"beta": 1.0}),
    ("betavae_beta4", "betavae", {"beta": 4.0}),
    ("tcvae_tc4", "tcvae", {"tc_beta": 4.0}),
    ("tcvae_tc8", "tcvae", {"tc_beta": 8.0}),
    ("factorvae_g10", "factorvae", {"factor_gamma": 10.0}),
    ("factorvae_g30", "factorvae", {"factor_gamma": 30.0}),
    ("pairs_beta1", "pairs", {"beta": 1.0}),
    ("pairs_beta4", "pairs", {"beta": 4.0}),
]
DENSE = [("dense_betavae_beta4", "betavae", {"beta": 4.0}), ("dense_pairs_beta4", "pairs", {"beta": 4.0})]


def _row(name: str, objective: str, strength: dict, data: str, run: Path, report: dict) -> dict[str, Any]:
    from studies.study import study_row

    row = study_row(run, report)
    dense = report.get("disentanglement_dense") or {}
    realism = report.get("realism") or {}
    labels = dense.get("unit_labels") or {}
    row.update({
        "run": name, "objective": objective, "strength": strength, "data": data,
        "mae_hu_window": report["reconstruction"].get("mae_hu_window"),
        **{f"dense_{key}": dense.get(key) for key in SCORES},
        "dense_mean": sum(dense[key] for key in SCORES) / len(SCORES) if "mig" in dense else None,
        "named_units": {unit: entry for unit, entry in labels.items() if entry["nmi"] >= 0.5},
        "sample_precision": (realism.get("samples_standard") or {}).get("precision"),
    })
    return row


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The rule of the module docstring: (the chosen row, why)."""
    baseline = next(row for row in rows if row["run"] == "betavae_beta1")
    limit = MAE_TOLERANCE * baseline["mae_hu_window"]
    allowed = [row for row in rows if row["mae_hu_window"] <= limit and row["dense_mean"] is not None]
    best = max(row["dense_mean"] for row in allowed)
    tied = [row for row in allowed if row["dense_mean"] >= best - SCORE_TIE]
    chosen = min(tied, key=lambda row: row["mae_hu_window"])
    excluded = [row["run"] for row in rows if row not in allowed]
    why = (f"MAE limit {limit:.1f} HU (1.25 x betavae β 1's {baseline['mae_hu_window']:.1f}); "
           f"excluded by it: {', '.join(excluded) or 'none'}; best mean of five {best:.3f}; "
           f"tied within {SCORE_TIE}: {', '.join(row['run'] for row in tied)}; chosen {chosen['run']}")
    return chosen, why


def run_objectives(base, data: str, dense_train: str | None, dense: str, report_dir: Path, *, max_slices: int,
                   command: str) -> list[dict[str, Any]]:
    """Train, export and score every run of GRID (and DENSE with ``dense_train``), then write the report."""
    from studies.study import _metrics_lines, score_run
    from train.train import train

    rows = []
    plan = [(name, objective, strength, data) for name, objective, strength in GRID]
    if dense_train:
        plan += [(name, objective, strength, dense_train) for name, objective, strength in DENSE]
    for name, objective, strength, source in plan:
        run = Path(base.out) / name
        epochs = max(1, base.epochs // 2) if objective == "pairs" else base.epochs  # the same images seen
        done = len(_metrics_lines(run)) >= epochs
        if not done:
            cfg = replace(base, data=[source], objective=objective, out=str(run), epochs=epochs, force=True,
                          **strength)
            train(cfg, command=f"{command}  # run {name}")
        report = score_run(run, data, max_slices=max_slices, seed=base.seed, dense=dense)
        rows.append(_row(name, objective, strength, source, run, report))
        print(f"objectives: {name} scored", file=sys.stderr, flush=True)
    write_report(rows, report_dir, command=command, settings={
        "data": data, "dense_train": dense_train, "dense": dense, "image_size": base.image_size,
        "width": base.width, "latent": base.latent, "epochs": base.epochs, "hu_map": base.hu_map,
        "batch_size": base.batch_size, "seed": base.seed, "max_slices": max_slices})
    return rows


def write_report(rows: list[dict[str, Any]], report_dir: Path, *, command: str, settings: dict[str, Any]) -> None:
    """report.md, objectives.json and the chart of MIG and DCI against MAE into ``report_dir``."""
    from ctgen.images.charts import scatter_chart, side_by_side
    from ctgen.images.render import save_png
    from ctgen.evaluation.report import markdown_table

    report_dir.mkdir(parents=True, exist_ok=True)
    chosen, why = choose(rows)
    (report_dir / "objectives.json").write_text(json.dumps({"settings": settings, "command": command,
                                                            "rows": rows, "chosen": chosen["run"], "why": why},
                                                           indent=1) + "\n")
    charts = [scatter_chart({data: [(row["mae_hu_window"], row[f"dense_{key}"], row["run"]) for row in rows
                                    if row["data"] == data and row[f"dense_{key}"] is not None]
                             for data in dict.fromkeys(row["data"] for row in rows)},
                            title=f"{label} (dense set) vs held-out MAE", x_label="MAE inside the head, -50..250 HU",
                            y_label=label) for key, label in (("mig", "MIG"), ("dci_disentanglement", "DCI D"))]
    save_png(side_by_side(*charts), report_dir / "scores_vs_mae.png", force=True)
    header = ["run", "objective", "trained on", "epochs", "MAE (HU)", "SSIM", "active", "MIG", "DCI D", "FactorVAE",
              "β-VAE", "SAP", "mean of five", "units with nMI ≥ 0.5", "sample precision"]
    table = [[row["run"], row["objective"], Path(row["data"]).name, row["epochs"], row["mae_hu_window"], row["ssim"],
              row["active_units"], *(row[f"dense_{key}"] for key in SCORES), row["dense_mean"],
              ", ".join(f"u{unit} {entry['factor']} {entry['nmi']:.2f}" for unit, entry in row["named_units"].items())
              or "-", row["sample_precision"]] for row in rows]
    text = [f"# Objectives: {len(rows)} runs, one budget", f"`{command}`",
            f"{settings['image_size']}² (HU map {settings['hu_map']}), latent {settings['latent']}, width "
            f"{settings['width']}, {settings['epochs']} epochs ({settings['epochs'] // 2} for pairs: the same images "
            f"seen), batch {settings['batch_size']}, seed {settings['seed']}. Reconstruction on the held-out patients "
            f"of `{settings['data']}` ({settings['max_slices']} slices); disentanglement and unit names on "
            f"`{settings['dense']}` (unseen patients at random levels).",
            markdown_table(header, table), "## The rule", __doc__.split("The rule (``choose``), ")[1].strip(),
            f"**Result:** {why}.", "![MIG and DCI against MAE](scores_vs_mae.png)"]
    (report_dir / "report.md").write_text("\n\n".join(text) + "\n")


def main(argv: list[str] | None = None) -> int:
    from ctgen.errors import CtgenError
    from train.__main__ import add_arguments, command_line, config_from_args

    parser = argparse.ArgumentParser(prog="python -m studies.objectives", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--dense", required=True, help="dense evaluation set (folder with factors.csv)")
    parser.add_argument("--dense-train", help="dense training set for the dense-coverage runs")
    parser.add_argument("--report", type=Path, default=Path("reports/objectives"), help="report folder")
    parser.add_argument("--max-slices", type=int, default=1000, help="slices each evaluation encodes")
    args = parser.parse_args(argv)
    if len(args.data or []) != 1:
        parser.error("give one --data folder")
    try:
        run_objectives(config_from_args(args), args.data[0], args.dense_train, args.dense, args.report,
                       max_slices=args.max_slices, command=command_line("studies.objectives", argv))
    except CtgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(args.report / "report.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
