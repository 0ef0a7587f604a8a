"""The seed study, reproduced: latent-size and β sweeps, every run exported and scored, one report.

    python -m studies.study --data data/phantom --out runs/study --report reports/seed_study \\
        --image-size 64 --width 16 --epochs 12 --precision bf16

Trains latent sizes --latent (10,20,50,100,500) at β = --at-beta (1) and βs --beta (1,20,50,200) at
latent size --at-latent (50); everything else (data, split, seed, epochs, architecture) is shared. A run
whose metrics.jsonl already holds --epochs epochs is read, not retrained, so a stopped study continues.
Each run is exported (``export.export_model``) to RUN/model and scored by ``ctgen.evaluation.evaluate`` on the same
study (held-out patients of the run's split, factors.csv for disentanglement) into RUN/report. The study
report (REPORT/report.md, study.json, figures) answers the seed study's claims with numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctgen.evaluation.metrics.disentangle import SCORE_NAMES

__all__ = ["grid_points", "run_study", "study_row"]


def grid_points(latents: list[int], betas: list[float], at_beta: float, at_latent: int) -> list[tuple[int, float]]:
    """The (latent, β) runs of both sweeps, each once: the latent sweep first, then the β sweep."""
    points = [(latent, at_beta) for latent in latents] + [(at_latent, beta) for beta in betas]
    return list(dict.fromkeys(points))


def _metrics_lines(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def train_point(base, latent: int, beta: float, command: str) -> Path:
    """Train one grid point under ``base.out`` unless its metrics already hold ``base.epochs`` epochs."""
    from studies.sweep import run_name
    from train.train import train

    run = Path(base.out) / run_name(latent, beta)
    done = len(_metrics_lines(run))
    if done < base.epochs:
        cfg = replace(base, latent=latent, beta=beta, out=str(run), resume=done > 0)
        train(cfg, command=f"{command}  # grid point latent={latent} beta={beta:g}")
    return run


def score_run(run: Path, data: str, *, max_slices: int, seed: int, rescore: bool = False,
              dense: str | None = None) -> dict[str, Any]:
    """Export ``run`` to RUN/model and evaluate it into RUN/report (both redone when the checkpoint is newer)."""
    from ctgen.evaluation.report import report_folder
    from ctgen.runtime.model import load_model
    from export.onnx_export import export_model

    checkpoint, model_dir, report_dir = run / "checkpoint_best.pt", run / "model", run / "report"
    card = model_dir / "model.json"
    if rescore or not card.is_file() or card.stat().st_mtime < checkpoint.stat().st_mtime:
        export_model(run, model_dir, name=f"study-{run.name}", force=True, seed=seed,
                     command=f"python -m export {run} --out {model_dir} --force")
    metrics_path = report_dir / "metrics.json"
    if rescore or not metrics_path.is_file() or metrics_path.stat().st_mtime < card.stat().st_mtime:
        return report_folder(load_model(model_dir, device="cpu"), data, report_dir, force=True,
                             split=run / "split.json", max_slices=max_slices, seed=seed, real=True, dense=dense)[0]
    return json.loads(metrics_path.read_text())


def study_row(run: Path, report: dict[str, Any]) -> dict[str, Any]:
    """One run's figures: the best epoch's validation terms (training units) and the evaluation's metrics."""
    config = json.loads((run / "config.json").read_text())["train"]
    lines = _metrics_lines(run)
    best = min(lines, key=lambda m: m["val_loss"])
    scores = report.get("disentanglement") or {}
    recon, activity, memo = report["reconstruction"], report["activity"], report.get("memorisation") or {}
    return {
        "run": run.name, "latent": config["latent"], "beta": config["beta"], "epochs": len(lines),
        "best_epoch": best["epoch"], "val_loss": best["val_loss"], "val_recon": best["val_recon"],
        "val_kl": best["val_kl"], "neg_elbo": best["val_recon"] + best["val_kl"],
        "val_loss_jitter": _jitter([m["val_loss"] for m in lines[-3:]]),
        "mae_hu": recon["mae_hu"], "psnr_db": recon["psnr_db"], "ssim": recon["ssim"],
        "active_units": activity["active_units"], "total_kl": float(sum(activity["kl_per_unit"])),
        **{key: scores.get(key) for key in SCORE_NAMES},
        "unit_factors": scores.get("unit_factors", {}),
        "factor_units": {name: {"unit": entry["unit"], "nmi": entry["nmi"], "chance": entry.get("chance_nmi")}
                         for name, entry in (scores.get("units") or {}).items()},
        "memorisation_ratio": memo.get("median_ratio"), "copied": memo.get("fraction_copied"),
        "real_mae_hu": (report.get("real_slices") or {}).get("mean_mae_hu"),
        "train_seconds": sum(m.get("seconds", 0.0) for m in lines),
    }  # fmt: skip


def _jitter(values: list[float]) -> float:
    """(max - min) / min: how much the validation loss moves between the last epochs, a yardstick for noise."""
    return (max(values) - min(values)) / min(values) if values and min(values) > 0 else 0.0


def run_study(base, data: str, report_dir: Path, *, latents: list[int], betas: list[float], at_beta: float,
              at_latent: int, max_slices: int, command: str, rescore: bool = False,
              title: str = "The seed study, reproduced on the phantom") -> list[dict[str, Any]]:
    """Train, export and score every grid point, then write the study report; returns the rows."""
    from studies.report import write_study_report

    rows = []
    for latent, beta in grid_points(latents, betas, at_beta, at_latent):
        run = train_point(base, latent, beta, command)
        rows.append(study_row(run, score_run(run, data, max_slices=max_slices, seed=base.seed, rescore=rescore)))
        print(f"study: {run.name} scored", file=sys.stderr, flush=True)
    settings = {"title": title, "command": command, "data": data, "image_size": base.image_size, "width": base.width,
                "epochs": base.epochs, "batch_size": base.batch_size, "lr": base.lr, "seed": base.seed,
                "precision": base.precision, "latents": latents, "betas": betas, "at_beta": at_beta,
                "at_latent": at_latent, "max_slices": max_slices}
    runs = {row["run"]: Path(base.out) / row["run"] for row in rows}
    write_study_report(rows, settings, runs, report_dir)
    return rows


def main(argv: list[str] | None = None) -> int:
    from ctgen.errors import CtgenError
    from studies.sweep import parse_list
    from train.__main__ import add_arguments, command_line, config_from_args

    parser = argparse.ArgumentParser(prog="python -m studies.study", description=__doc__.splitlines()[0])
    add_arguments(parser, grid_types=True)
    parser.add_argument("--report", type=Path, default=Path("reports/seed_study"), help="study report folder")
    parser.set_defaults(latent="10,20,50,100,500", beta="1,20,50,200")  # --latent / --beta: the two sweeps
    parser.add_argument("--at-beta", type=float, default=1.0, help="β of the latent sweep")
    parser.add_argument("--at-latent", type=int, default=50, help="latent size of the β sweep")
    parser.add_argument("--max-slices", type=int, default=1000, help="slices each evaluation encodes")
    parser.add_argument("--rescore", action="store_true", help="export and evaluate every run again")
    parser.add_argument("--title", default="The seed study, reproduced on the phantom", help="the report's title")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required")
    if len(args.data) != 1:
        parser.error("the study scores on one study folder: give one --data folder")
    try:
        latents, betas = parse_list(args.latent, int), parse_list(args.beta, float)
        args.latent, args.beta = args.at_latent, args.at_beta
        base = config_from_args(args)
        run_study(base, args.data[0], args.report, latents=latents, betas=betas, at_beta=args.at_beta,
                  at_latent=args.at_latent, max_slices=args.max_slices,
                  command=command_line("studies.study", argv), rescore=args.rescore, title=args.title)
    except CtgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(args.report / "report.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
