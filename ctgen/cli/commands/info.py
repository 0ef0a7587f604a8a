"""ctgen info and ctgen units: what a model is, where it runs, which units carry information."""

from __future__ import annotations

import json
import platform
import sys

from ctgen.cli.options import DeviceOption, JsonOption, ModelOption


def info(model: ModelOption = None, device: DeviceOption = "auto", json_summary: JsonOption = False) -> None:
    """The model card in brief (with the units bound to measured factors: factor, unit of measure, and the mean
    and standard deviation that map a unit's value to the factor's), the execution provider actually used and
    the versions of the stack.

    Checks every file of the model against the card's checksums and finds the provider (starting a session
    where CUDA may load). Printed on stdout; --json for scripts.
    """
    import numpy
    import pydicom

    from ctgen import __version__
    from ctgen.model import load_model

    vae = load_model(model, device=device)
    vae.verify()
    provider = vae.provider
    import onnxruntime

    card = vae.card
    metrics = card.get("metrics") or {}
    training = card.get("training") or {}
    export = card.get("export") or {}
    summary = {
        "model": {
            "name": card.get("name"),
            "path": str(vae.path),
            "image_size": vae.grid.size,
            "spacing_mm": vae.grid.spacing_mm,
            "window_hu": list(vae.grid.window_hu),
            "latent_size": vae.latent_size,
            "beta": card.get("beta"),
            "capacity": card.get("capacity"),
            "training": {key: training.get(key) for key in ("data", "patients", "slices", "epochs") if key in training},
            "metrics": {key: metrics.get(key) for key in ("val_loss", "recon_mae_hu", "active_units") if key in metrics},
            "export": {key: export.get(key) for key in ("opset", "torch", "onnx", "onnxruntime") if key in export},
            "files": {name: entry.get("sha256") for name, entry in (card.get("files") or {}).items()},
            "bound_units": [bound._asdict() for bound in card.bound_units],
        },
        "device": device,
        "provider": provider,
        "versions": {
            "ctgen": __version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "pydicom": pydicom.__version__,
            "python": platform.python_version(),
        },
        "card": card,
    }
    if json_summary:
        print(json.dumps(summary))
        return
    from rich.table import Table

    from ctgen.cli.run import rich_console

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    brief = summary["model"]
    table.add_row("model", f"{brief['name']}  ({brief['path']})")
    hu_map = vae.grid.hu_map
    mapping = (f"HU window {hu_map.hu[0]:g}..{hu_map.hu[-1]:g} (clipped)" if hu_map.is_window else
               "HU map " + ", ".join(f"{hu:g}->{unit:g}" for hu, unit in zip(hu_map.hu, hu_map.unit)))
    table.add_row("grid", f"{brief['image_size']}² px at {brief['spacing_mm']:g} mm, {mapping}")
    table.add_row("latent", f"{brief['latent_size']} units, β {_shown(brief['beta'])}"
                            + (f", capacity {brief['capacity']}" if brief["capacity"] else ""))
    for section in ("training", "metrics", "export"):
        if brief[section]:
            table.add_row(section, ", ".join(f"{key} {_shown(value)}" for key, value in brief[section].items()))
    if card.bound_units:
        table.add_row("bound units", "; ".join(_bound_text(bound) for bound in card.bound_units)
                      + " (ctgen edit --set FACTOR=VALUE)")
    labels = vae.card.unit_labels
    if labels:
        table.add_row("units", ", ".join(f"u{unit} {factor}" for unit, factor in sorted(labels.items())))
    prior = card.get("prior")
    table.add_row("sampling", f"fitted {prior.get('kind')} of {prior.get('components')} components (prior.npz)"
                  if isinstance(prior, dict) else "standard normal prior (no prior.npz)")
    for name, sha in brief["files"].items():
        table.add_row(name, f"sha256 {sha}")
    table.add_row("provider", f"{provider} (--device {device})")
    table.add_row("versions", ", ".join(f"{key} {value}" for key, value in summary["versions"].items()))
    rich_console().print(table)


def _bound_text(bound) -> str:
    """"u0 rotation_deg in deg (mean 1.5, sd 8)": a bound unit, its factor and the mapping z -> value."""
    measure = f" in {bound.unit_of_measure}" if bound.unit_of_measure else ""
    return f"u{bound.unit} {bound.factor}{measure} (mean {bound.mean:.4g}, sd {bound.std:.4g})"


def _shown(value):
    """Card values for reading: floats to 4 significant digits (--json keeps them whole)."""
    return f"{value:.4g}" if isinstance(value, float) else value


def kl_set(card) -> str:
    """Where the card's per-unit KL (the one the export ordered the units by) was measured, in words."""
    metrics = card.get("metrics") or {}
    if "kl_per_unit" in ((card.get("evaluation") or {}).get("figures") or ()):
        # cards attached before issue 24: the evaluation's KL replaced the one the units were ordered by
        return "the evaluated slices (export.attach; the unit numbers follow the training validation KL)"
    source = str(metrics.get("kl_source") or "")
    if source in ("checkpoint", "run metrics.jsonl"):
        return "the training run's validation patients"
    return source or "an unrecorded set"


def units(model: ModelOption = None, json_summary: JsonOption = False) -> None:
    """Latent units ranked by KL divergence (nats, on the set the export ordered the units by: the training
    run's validation patients), with the factor each carries when the card names one (a unit bound to a
    measured factor: "rotation_deg (bound, deg)"); beside it the KL of the slices ``ctgen evaluate``
    measured, when the card holds it.

    Units with high KL carry information; units near 0 are inactive (the prior). Reads only the card.
    """
    from ctgen.model import read_card, resolve_model_dir

    model_dir = resolve_model_dir(model)
    card = read_card(model_dir)
    metrics = card.get("metrics") or {}
    kl, labels = card.kl_per_unit, card.unit_labels
    bound_of = {bound.unit: bound for bound in card.bound_units}
    active = metrics.get("active_units")
    total = sum(kl) if kl else 0.0
    evaluated = metrics.get("eval_kl_per_unit")
    evaluated = evaluated if isinstance(evaluated, list) and len(evaluated) == card.latent_size else None
    rows = [{"rank": rank, "unit": unit, "kl": kl[unit] if kl else None,
             "share": kl[unit] / total if kl and total > 0 else None,
             "active": (rank <= active) if isinstance(active, int) else None,
             "factor": bound_of[unit].factor if unit in bound_of else labels.get(unit)}
            | ({"bound": {"unit_of_measure": bound_of[unit].unit_of_measure, "mean": bound_of[unit].mean,
                          "std": bound_of[unit].std}} if unit in bound_of else {})
            | ({"eval_kl": evaluated[unit]} if evaluated else {})
            for rank, unit in enumerate(card.units_by_kl, start=1)]
    sets = {"kl": kl_set(card)} | ({"eval_kl": str(metrics.get("eval_kl_set") or "ctgen evaluate")} if evaluated else {})
    if json_summary:
        print(json.dumps({"model": card.name, "path": str(model_dir), "active_units": active, "units": rows,
                          "sets": sets}))
        return
    from rich.table import Table

    from ctgen.cli.run import rich_console

    table = Table(title=f"{card.name}: latent units by KL (nats) on {sets['kl']}", title_justify="left")
    for name, justify in (("rank", "right"), ("unit", "right"), ("KL", "right"), ("share", "right"),
                          *((("eval KL", "right"),) if evaluated else ()), ("factor", "left"), ("", "left")):
        table.add_column(name, justify=justify)
    largest = max((row["kl"] for row in rows if row["kl"] is not None), default=0.0) or 1.0
    for row in rows:
        kl_text = "-" if row["kl"] is None else f"{row['kl']:.3f}"
        share = "-" if row["share"] is None else f"{100 * row['share']:.1f}%"
        bar = "█" * round(20 * row["kl"] / largest) if row["kl"] else ""
        marker = "" if row["active"] is None else (" active" if row["active"] else "")
        factor = row["factor"] or ""
        if "bound" in row:
            measure = row["bound"]["unit_of_measure"]
            factor += f" (bound{', ' + measure if measure else ''})"
        table.add_row(str(row["rank"]), f"u{row['unit']}", kl_text, share,
                      *((f"{row['eval_kl']:.3f}",) if evaluated else ()), factor, bar + marker)
    rich_console().print(table)
    if evaluated:
        print(f"ctgen: note: eval KL: on {sets['eval_kl']} (ctgen evaluate)", file=sys.stderr, flush=True)
    if kl is None:
        print("ctgen: note: the card has no per-unit KL; units listed in index order", file=sys.stderr, flush=True)
