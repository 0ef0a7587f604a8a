"""The JSON side of an evaluation: the compact figures a model card keeps (``card_metrics``), the model's
summary, and strict-JSON values for the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.evaluation.metrics.disentangle import SCORE_NAMES
from ctgen.images.preprocess import Grid

__all__ = ["card_metrics", "display_path", "json_ready", "map_text", "model_summary"]


def card_metrics(report: dict) -> dict:
    """The compact figures for a model card's "metrics" from an ``evaluate_model`` report (JSON-ready).

    The card's own ``kl_per_unit``, ``units_by_kl`` and ``active_units`` stay as the export wrote them (the KL
    that the exported unit order was made by); the evaluated slices' KL comes as ``eval_kl_per_unit``."""
    recon, activity = report["reconstruction"], report["activity"]
    card = {"recon_mae_hu": recon["mae_hu"], "recon_psnr_db": recon["psnr_db"], "recon_ssim": recon["ssim"],
            "recon_set": f"{recon['n_images']} slices, {recon['set']}",
            "eval_kl_per_unit": activity["kl_per_unit"], "eval_active_units": activity["active_units"],
            "eval_kl_set": f"{report['study'].get('evaluated')} evaluated slices of {report['study'].get('path')}",
            "active_units_by_variance": activity["active_units_by_variance"]}
    dense, heldout = report.get("disentanglement_dense") or {}, report.get("disentanglement") or {}
    scores = dense if "mig" in dense else heldout  # the dense set, when scored, names the units
    if "mig" in scores:
        card["disentanglement"] = {key: scores[key] for key in SCORE_NAMES} | {"set": scores["set"]}
        card["unit_factors"] = dict(scores["unit_factors"])
        card["unit_labels"] = dict(scores.get("unit_labels") or {})
    if "mig" in dense and "mig" in heldout:
        card["disentanglement_heldout"] = {key: heldout[key] for key in SCORE_NAMES} | {"set": heldout["set"]}
    memorisation = report.get("memorisation") or {}
    if "median_ratio" in memorisation:
        card["memorisation"] = {key: memorisation[key] for key in ("median_ratio", "fraction_copied", "quantile")}
    if (report.get("real_slices") or {}).get("mean_mae_hu") is not None:
        card["real_slices_mae_hu"] = report["real_slices"]["mean_mae_hu"]
    control = (report.get("controllability") or {}).get("factors") or {}
    if control:
        card["controllability"] = {factor: {key: entry.get(key) for key in ("unit", "slope", "r2", "leakage_max",
                                                                             "leakage_max_factor", "skipped")
                                            if key in entry}
                                   for factor, entry in control.items()}
    for key in ("mae_hu_window", "mae_hu_full"):
        if key in recon:
            card[f"recon_{key}"] = recon[key]
    realism = report.get("realism") or {}
    if "heldout_b" in realism:
        card["realism"] = {name: {"precision": entry["precision"], "recall": entry["recall"]}
                           for name, entry in realism.items() if isinstance(entry, dict) and "precision" in entry}
        card["realism"]["anatomy_fail_share"] = {name: entry["fail_share"] for name, entry in realism["anatomy"].items()}
    return card


def display_path(path: Path) -> str:
    """Relative to the working folder when inside it: reports get committed and shared."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def json_ready(value: Any) -> Any:
    """Python floats/ints/lists; NaN and infinity become None (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def model_summary(model) -> dict:
    """The report's "model" section: name, path (relative when under the working folder), grid, β, checksum."""
    card = model.card
    return {"name": card.get("name"), "path": display_path(model.path), "latent_size": model.latent_size,
            "image_size": model.grid.size, "spacing_mm": model.grid.spacing_mm,
            "window_hu": list(model.grid.window_hu), "beta": card.get("beta"),
            "encoder_sha256": ((card.get("files") or {}).get("encoder.onnx") or {}).get("sha256")}


def map_text(grid: Grid) -> str:
    """The grid's HU map as a short phrase for the report."""
    hu_map = grid.hu_map
    if hu_map.is_window:
        return f"window {hu_map.hu[0]:g}..{hu_map.hu[1]:g} HU, clipped"
    return "HU map " + ", ".join(f"{hu:g}->{unit:g}" for hu, unit in zip(hu_map.hu, hu_map.unit))
