"""ctgen info: what a model is and where it runs."""

from __future__ import annotations

import json
import platform

from ctgen.cli.options import shared

OPTIONS = shared("model", "device", "json_summary")


def info(*, model, device, json_summary) -> None:
    """The model card in brief (with the units bound to measured factors: factor, unit of measure, and the mean
    and standard deviation that map a unit's value to the factor's), the execution provider actually used and
    the versions of the stack.

    Checks every file of the model against the card's checksums and finds the provider (starting a session
    where CUDA may load). Printed on stdout; --json for scripts.
    """
    import numpy
    import pydicom

    from ctgen import __version__
    from ctgen.runtime.model import load_model

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
    labels = vae.card.unit_factors
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
