"""ctgen units: which latent units carry information, and which factor each carries."""

from __future__ import annotations

import json
import sys

from ctgen.cli.options import shared

OPTIONS = shared("model", "json_summary")


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


def units(*, model, json_summary) -> None:
    """Latent units ranked by KL divergence (nats, on the set the export ordered the units by: the training
    run's validation patients), with the factor each carries when the card names one (a unit bound to a
    measured factor: "rotation_deg (bound, deg)"); beside it the KL of the slices ``ctgen evaluate``
    measured, when the card holds it.

    Units with high KL carry information; units near 0 are inactive (the prior). Reads only the card.
    """
    from ctgen.runtime.model import read_card, resolve_model_dir

    model_dir = resolve_model_dir(model)
    card = read_card(model_dir)
    metrics = card.get("metrics") or {}
    kl, labels = card.kl_per_unit, card.unit_factors
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
