"""The seed study's report: tables, answers to its claims, and figures, from ``studies.study`` rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

__all__ = ["choose_beta", "claims", "write_study_report"]

SAME_LOSS = 0.02  # runs whose validation loss differs by less than this fraction count as equal
MAE_TOLERANCE = 1.25  # choose_beta: reconstruction may be at most this much worse than at the smallest β
SCORE_TIE = 0.01  # choose_beta: mean disentanglement scores closer than this count as a tie
SCORES = ("mig", "dci_disentanglement", "factor_vae", "beta_vae", "sap")


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def _sweeps(rows: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The latent sweep's rows (at settings' β) by latent size, and the β sweep's (at its latent size) by β."""
    latent_rows = sorted((r for r in rows if r["beta"] == settings["at_beta"] and r["latent"] in settings["latents"]),
                         key=lambda r: r["latent"])
    beta_rows = sorted((r for r in rows if r["latent"] == settings["at_latent"] and r["beta"] in settings["betas"]),
                       key=lambda r: r["beta"])
    return latent_rows, beta_rows


def claims(rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, list[str]]:
    """The seed study's claims, each answered from the rows in a few sentences."""
    latent_rows, beta_rows = _sweeps(rows, settings)
    answers: dict[str, list[str]] = {}
    if len(latent_rows) > 1:
        best = min(latent_rows, key=lambda r: r["val_loss"])
        lines = [f"Best validation loss at latent size {best['latent']} ({best['val_loss']:.1f}). Relative to it: "
                 + ", ".join(f"{r['latent']}: {100 * (r['val_loss'] / best['val_loss'] - 1):+.1f}%" for r in latent_rows)
                 + "."]
        # the loss's own movement between a run's last epochs: differences between runs below it are noise
        jitter = sorted(r.get("val_loss_jitter", 0.0) for r in latent_rows)[len(latent_rows) // 2]
        same = max(SAME_LOSS, jitter)
        lines.append(f"Yardstick: within one run the validation loss of the last three epochs moves by "
                     f"{100 * jitter:.1f}% (median over these runs); runs closer than {100 * same:.1f}% count as equal.")
        middle = [r for r in latent_rows if 20 <= r["latent"] <= 100]
        if len(middle) > 1:
            spread = max(r["val_loss"] for r in middle) / min(r["val_loss"] for r in middle) - 1
            verdict = "equal" if spread < same else "not equal"
            lines.append(f"Latent sizes 20–100 span {100 * spread:.1f}% of validation loss: {verdict} "
                         f"(the seed study: equal).")
        reference = min(middle or latent_rows, key=lambda r: r["val_loss"])["val_loss"]
        for edge in (r for r in latent_rows if r["latent"] in (10, 500)):
            worse = edge["val_loss"] / reference - 1
            lines.append(f"Latent size {edge['latent']}: {100 * worse:+.1f}% against the best of 20–100 — "
                         + ("worse, as the seed study found." if worse >= same else
                            "not distinguishably worse here (the seed study found it worse)."))
        lines.append("Active units (KL > 0.01 nats): " + ", ".join(f"{r['latent']}: {r['active_units']}"
                                                                   for r in latent_rows) + ".")
        answers["Validation loss vs latent size"] = lines
    if len(beta_rows) > 1:
        first, last = beta_rows[0], beta_rows[-1]
        answers["Reconstruction vs β"] = [
            "Held-out MAE inside the head: " + ", ".join(f"β {r['beta']:g}: {r['mae_hu']:.1f} HU" for r in beta_rows)
            + f"; SSIM {first['ssim']:.2f} → {last['ssim']:.2f}. Reconstruction "
            + ("worsens" if last["mae_hu"] > first["mae_hu"] else "does not worsen") + f" as β grows "
            f"({last['mae_hu'] / first['mae_hu']:.1f}x the error at β {last['beta']:g}).",
            "Active units: " + ", ".join(f"β {r['beta']:g}: {r['active_units']}" for r in beta_rows) + "."]
        lines = []
        for key in SCORES:
            best = max(beta_rows, key=lambda r: r[key] if r[key] is not None else -1)
            lines.append(f"{key}: " + ", ".join(f"{_fmt(r[key])}" for r in beta_rows) + f" (best at β {best['beta']:g})")
        mig = [r["mig"] for r in beta_rows if r["mig"] is not None]
        trend = ("rises with β" if mig == sorted(mig) else "falls with β" if mig == sorted(mig, reverse=True)
                 else "is not monotone in β")
        betas = ", ".join(f"{r['beta']:g}" for r in beta_rows)
        answers["Disentanglement vs β"] = [f"Over β {betas}: MIG {trend}.", *lines]
        named = []
        for r in beta_rows:
            pairs = ", ".join(f"u{unit} → {factor}" for unit, factor in sorted(r["unit_factors"].items(),
                                                                              key=lambda item: int(item[0])))
            named.append(f"β {r['beta']:g}: {pairs or 'no unit tracks one factor clearly'}.")
        answers["Which units encode which factors"] = named
    return answers


def choose_beta(beta_rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The β for a model to ship, by a rule fixed before the sweep's results were seen, and why.

    Eligible: held-out MAE at most MAE_TOLERANCE x that of the smallest β (reconstruction stays usable).
    Among them, the highest mean of the five disentanglement scores (units separate); within SCORE_TIE
    of the best, the lowest memorisation ratio (samples lie nearest real slices: more realistic).
    """
    base = min(beta_rows, key=lambda r: r["beta"])
    eligible = [r for r in beta_rows if r["mae_hu"] <= MAE_TOLERANCE * base["mae_hu"]]

    def mean_score(row: dict[str, Any]) -> float:
        return sum(row[key] or 0.0 for key in SCORES) / len(SCORES)

    top = max(mean_score(r) for r in eligible)
    tied = [r for r in eligible if mean_score(r) >= top - SCORE_TIE]
    chosen = min(tied, key=lambda r: r["memorisation_ratio"] if r["memorisation_ratio"] is not None else math.inf)
    excluded = [f"{r['beta']:g}" for r in beta_rows if r not in eligible]
    others = [f"{r['beta']:g}" for r in tied if r is not chosen]
    why = (f"β {chosen['beta']:g}: mean disentanglement score {mean_score(chosen):.3f} ("
           + ", ".join(f"β {r['beta']:g}: {mean_score(r):.3f}" for r in beta_rows) + ")"
           + (f"; β {', '.join(excluded)} excluded, MAE above {MAE_TOLERANCE:g}x that of β {base['beta']:g}"
              if excluded else "")
           + (f"; tied within {SCORE_TIE:g} with β {', '.join(others)}, chosen for the lower memorisation ratio "
              f"{chosen['memorisation_ratio']:.2f}" if others else "")
           + ".")
    return chosen, why


def write_study_report(rows: list[dict[str, Any]], settings: dict[str, Any], runs: dict[str, Path],
                       report_dir: Path) -> None:
    """report.md, study.json and figures into ``report_dir`` (replaced)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    for old in report_dir.glob("*.png"):
        old.unlink()
    from ctgen.images.charts import line_chart, side_by_side
    from ctgen.images.render import save_png

    at_beta, at_latent = settings["at_beta"], settings["at_latent"]
    latent_rows, beta_rows = _sweeps(rows, settings)
    figures = []
    if len(latent_rows) > 1:
        chart = line_chart({"validation loss": [(r["latent"], r["val_loss"]) for r in latent_rows]},
                           title=f"validation loss (best epoch) vs latent size, beta {at_beta:g}", x_label="latent size")
        units = line_chart({"active units": [(r["latent"], r["active_units"]) for r in latent_rows]},
                           title="active units (KL > 0.01 nats) vs latent size", x_label="latent size")
        save_png(side_by_side(chart, units), report_dir / "latent_size.png", force=True)
        figures.append("latent_size.png")
    if len(beta_rows) > 1:
        recon = line_chart({"MAE (HU)": [(r["beta"], r["mae_hu"]) for r in beta_rows]},
                           title=f"held-out MAE inside the head (HU) vs beta, latent {at_latent}", x_label="beta")
        scores = line_chart({key: [(r["beta"], r[key]) for r in beta_rows] for key in SCORES[:3]},
                            title="disentanglement vs beta", x_label="beta", y_range=(0.0, 1.0))
        save_png(side_by_side(recon, scores), report_dir / "beta.png", force=True)
        figures.append("beta.png")
        for r in beta_rows:
            for kind in ("traversal", "samples"):
                source = runs[r["run"]] / "report" / f"{kind}.png"
                if source.is_file():
                    name = f"{kind}_beta{r['beta']:g}".replace(".", "p") + ".png"
                    shutil.copyfile(source, report_dir / name)
                    figures.append(name)
    (report_dir / "study.json").write_text(json.dumps({"settings": settings, "runs": rows}, indent=1) + "\n")
    (report_dir / "report.md").write_text(_markdown(rows, settings, figures))


def _markdown(rows, settings, figures) -> str:
    from ctgen.evaluation.report import markdown_table

    latent_rows, beta_rows = _sweeps(rows, settings)
    size = settings["image_size"]
    lines = [
        f"# {settings.get('title', 'The seed study, reproduced on the phantom')}",
        "",
        f"`{settings['command']}`",
        "",
        f"Study `{settings['data']}`; every run {size}² at {240 / size:g} mm, width {settings['width']}, "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {settings['lr']:g}, seed {settings['seed']}, "
        f"precision {settings['precision']}; the same patient split for all. Each run is exported and scored with "
        f"`ctgen evaluate` ({settings['max_slices']} slices, half from held-out patients).",
        "",
        f"β multiplies the KL of a loss whose reconstruction term is the squared error summed over the {size}² "
        f"pixels (window units), so β = 1 is the ELBO and the KL weight per pixel is β / {size * size}.",
        "",
        "## All runs",
        "",
        markdown_table(["latent", "β", "epochs", "val loss", "val recon", "val KL", "MAE HU", "PSNR", "SSIM", "active",
                 "MIG", "DCI D", "FactorVAE", "β-VAE", "SAP", "memorisation", "real MAE HU"],
                [[r["latent"], r["beta"], r["epochs"], r["val_loss"], r["val_recon"], r["val_kl"], r["mae_hu"],
                  r["psnr_db"], r["ssim"], r["active_units"], r["mig"], r["dci_disentanglement"], r["factor_vae"],
                  r["beta_vae"], r["sap"], r["memorisation_ratio"], r["real_mae_hu"]]
                 for r in sorted(rows, key=lambda r: (r["latent"], r["beta"]))]),
        "",
        "Validation terms at the best epoch, in training units (val loss = recon + β·KL); MAE inside the head, "
        "PSNR/SSIM at brain window on held-out patients; memorisation: median distance of samples to their nearest "
        "training slice over that of held-out slices (≈ 1 or above: no copying); real: pydicom's real CT slices.",
        "",
    ]
    for title, answer in claims(rows, settings).items():
        lines += [f"## {title}", "", *(f"- {line}" for line in answer), ""]
    if len(beta_rows) > 1:
        chosen, why = choose_beta(beta_rows)
        lines += ["## Choice of β", "", f"By the rule of `studies.report.choose_beta` (reconstruction within "
                  f"{MAE_TOLERANCE:g}x of the smallest β, then the best mean of MIG, DCI D, FactorVAE, β-VAE and SAP, "
                  f"then the more realistic samples): {why}", ""]
    if beta_rows:
        factors = sorted({name for r in beta_rows for name in r["factor_units"]})
        lines += ["### Best unit per factor (normalised MI; chance level in brackets)", "",
                  markdown_table(["factor", *(f"β {r['beta']:g}" for r in beta_rows)],
                          [[name, *(_unit_cell(r["factor_units"].get(name)) for r in beta_rows)] for name in factors]),
                  ""]
    lines += ["## Figures", ""] + [line for name in figures for line in (f"![{name}]({name})", "")]
    return "\n".join(lines)


def _unit_cell(entry: dict | None) -> str:
    if not entry:
        return "–"
    return f"u{entry['unit']} {entry['nmi']:.2f} ({entry['chance']:.2f})"
