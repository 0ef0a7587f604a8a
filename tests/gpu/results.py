"""What the acceptance run reads back: run folders, pytest's JUnit XML, and the closing summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any


def run_name(latent: int, beta: float) -> str:
    """The run folder of one grid point: latent50_beta1, latent50_beta0p5."""
    return f"latent{latent}_beta{beta:g}".replace(".", "p")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """Complete lines of a run's metrics.jsonl (one is appended per epoch while the run goes on)."""
    try:
        text = (run / "metrics.jsonl").read_text()
    except OSError:
        return []
    lines = text.split("\n")[:-1]  # the last piece is unfinished (or empty)
    return [json.loads(line) for line in lines if line]


def run_summary(runs: Path, work: Path, latent: int, beta: float) -> dict[str, Any]:
    name = run_name(latent, beta)
    metrics = read_metrics(runs / name)
    results = {}
    for label in ("calibration", "continued"):
        path = work / f"{name}.{label}.result.json"
        if path.is_file():
            results[label] = json.loads(path.read_text())
    summary: dict[str, Any] = {"latent": latent, "beta": beta, "epochs": len(metrics)}
    if metrics:
        best = min(metrics, key=lambda m: m.get("val_loss", m["train_loss"]))
        steady = [m["images_per_s"] for m in metrics[1:]]
        summary.update(
            best_epoch=best["epoch"], best_val_loss=best.get("val_loss"), val_recon=best.get("val_recon"),
            val_kl=best.get("val_kl"), recon_mae_hu=best.get("recon_mae_hu"), active_units=best.get("active_units"),
            images_per_s_epoch1=round(metrics[0]["images_per_s"], 1),
            images_per_s_steady=round(sorted(steady)[len(steady) // 2], 1) if steady else None,
            train_seconds=round(sum(m["train_seconds"] for m in metrics), 1),
            epoch_seconds=round(sum(m["seconds"] for m in metrics), 1),
        )  # fmt: skip
    for key in ("cache_on_gpu", "max_memory_allocated_mib", "max_memory_reserved_mib", "gpu"):
        values = [r.get(key) for r in results.values() if r.get(key) is not None]
        if values:
            summary[key] = max(values) if isinstance(values[0], float) else values[-1]
    errors = [f"{label}: {r['error']}" for label, r in results.items() if r.get("error")]
    if errors:
        summary["errors"] = errors
    return summary

def epoch_timing(phase: dict[str, Any], calibration_epochs: int) -> tuple[float, float]:
    """(seconds per epoch with every run sharing the GPU, start-up seconds of a phase) from the stamps."""
    per_epoch, firsts = [], []
    for run in phase["runs"].values():
        done = run["epoch_done_s"]
        if done:
            firsts.append(done[0])
        per_epoch += [later - earlier for earlier, later in zip(done, done[1:])]
    if calibration_epochs >= 2 and per_epoch:
        epoch_s = max(per_epoch)
        return epoch_s, max(0.0, max(firsts) - epoch_s)
    first = max(firsts) if firsts else 0.0
    return first, first  # one epoch only: start and epoch cannot be told apart; assume each takes it all


def junit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "tests": []}
    root = ElementTree.parse(path).getroot()
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:300]
        cases.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                      "message": message})  # fmt: skip
    count = lambda outcome: sum(case["outcome"] == outcome for case in cases)  # noqa: E731
    return {"passed": count("passed"), "failed": count("failed"), "errors": count("error"),
            "skipped": count("skipped"), "tests": cases}  # fmt: skip


def summary_lines(report: dict[str, Any]) -> dict[str, Any]:
    stages = report["stages"]
    lines = [f"acceptance ({report['mode']}): {report['wall_s']:.0f} s of {report['budget_s']:.0f} s"]
    for name, stage in stages.items():
        text = f"  {name:<10} {stage['status']:<9} {stage.get('seconds', 0):6.1f} s"
        if name == "gpu_tests" and "passed" in stage:
            text += f"  {stage['passed']} passed, {stage['failed']} failed, {stage['skipped']} skipped"
        if name == "training" and stage.get("runs"):
            epochs = sorted({run["epochs"] for run in stage["runs"].values()})
            text += f"  epochs {epochs}, aggregate {stage.get('aggregate_images_per_s')} img/s"
        if name == "probe" and "images_per_s" in stage:
            text += f"  one run alone {stage['images_per_s']} img/s"
        if name == "ort_check" and "cpu" in stage:
            text += "  " + ", ".join(f"{key}: within tolerance {value['within_tolerance']}"
                                     for key, value in stage.items()
                                     if isinstance(value, dict) and "within_tolerance" in value)
        reason = stage.get("reason") or stage.get("error")
        if reason:
            text += f"  ({reason[:160]})"
        lines.append(text)
    return {"lines": lines, "statuses": {name: stage["status"] for name, stage in stages.items()}}
