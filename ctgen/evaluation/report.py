"""The evaluation report: ``report_folder`` runs ``ctgen.evaluation.evaluate.evaluate_model``, reads its numbers in one
line each (``interpret``), draws the figures and writes ``metrics.json``, ``report.md`` and the PNGs into a
folder atomically. Library code: ``ctgen evaluate`` and ``studies.study`` both call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctgen.defaults import ACTIVE_UNIT_KL
from ctgen.evaluation.metrics.disentangle import SCORE_NAMES

__all__ = ["REPORT_FILES", "check_out", "control_figure", "control_markdown", "draw_figures", "interpret",
           "kl_bar_chart", "markdown_table", "render_markdown", "report_folder", "write_report"]

REPORT_FILES = ("metrics.json", "report.md", "kl_per_unit.png", "traversal.png", "samples.png",
                "reconstructions.png", "real_slices.png", "spectra.png")
TRAVERSAL_OFFSETS = (-3.0, -1.5, 0.0, 1.5, 3.0)
DIFF_HU = 100.0  # difference panels: ±DIFF_HU is black / white


def report_folder(model, study, out: Path, *, force: bool, **options: Any) -> tuple[dict, list[str]]:
    """``evaluate_model(model, study, **options)`` with its interpretation, figures and report written to ``out``.

    Returns the report (metrics.json's content) and the figures' file names. Raises what evaluate_model
    and write_report raise.
    """
    from ctgen.evaluation.evaluate import evaluate_model

    pictures: dict[str, Any] = {}
    report = evaluate_model(model, study, pictures=pictures, **options)
    report["interpretation"] = interpret(report)
    figures = draw_figures(model, report, pictures)
    write_report(report, figures, out, force)
    return report, list(figures)


def draw_figures(model, report: dict, pictures: dict) -> dict[str, Any]:
    """The report's PNGs as PIL images by file name, from ``evaluate_model``'s report and pictures."""
    import numpy as np

    from ctgen.latent import traverse
    from ctgen.images.preprocess import from_model
    from ctgen.images.render import PICTURE_PX, WINDOWS, grid_image

    scale, brain = {"tile_px": PICTURE_PX}, WINDOWS["brain"]  # tiles of PICTURE_PX or more, as elsewhere
    columns = {"col_labels": ["original", "reconstruction", f"diff ±{DIFF_HU:g} HU"], **scale}
    activity = report["activity"]
    units = activity["units_by_kl"][: min(5, model.latent_size)]
    named = (report.get("disentanglement") or {}).get("unit_factors", {})
    start = np.asarray(pictures["traversal_start"], np.float32)
    labels = [" ".join(filter(None, [f"u{u} KL {activity['kl_per_unit'][u]:.2f}", named.get(str(u))])) for u in units]
    offsets = [f"{offset:+g}" if offset else "recon" for offset in TRAVERSAL_OFFSETS]
    figures = {
        "kl_per_unit.png": kl_bar_chart(activity["kl_per_unit"], activity["threshold"]),
        "traversal.png": grid_image(
            from_model(model.decode(traverse(start, units, TRAVERSAL_OFFSETS)), model.grid), brain, rows=len(units),
            cols=len(TRAVERSAL_OFFSETS), row_labels=labels, col_labels=offsets, **scale,
            title=f"traversal around {pictures['traversal_label']}, top units by KL"),
        "samples.png": grid_image(pictures["samples"], brain, rows=4, cols=8, **scale,
                                  title="samples from the prior (seeded)"),
    }
    if pictures.get("spectra"):
        figures["spectra.png"] = spectra_figure(pictures["spectra"])
    for factor, (requested, measured) in (pictures.get("control") or {}).items():
        figures[control_figure_name(factor)] = control_figure(factor, report["controllability"]["factors"][factor],
                                                              requested, measured)
    for name, what in (("reconstructions", report["reconstruction"]["set"]), ("real_slices", "pydicom's real CT")):
        panels = pictures.get(name)
        if panels is not None and len(panels):
            figures[f"{name}.png"] = grid_image(
                panels.reshape(-1, *panels.shape[-2:]), [brain, brain, (0.0, 2 * DIFF_HU)], rows=len(panels), cols=3,
                row_labels=pictures[f"{name}_labels"], title=f"{what}, brain window", **columns)
    return figures


def control_figure_name(factor: str) -> str:
    return f"control_{factor}.png"


def control_figure(factor: str, entry: dict, requested: Any, measured: Any) -> Any:
    """One bound factor's controllability (``ctgen.images.charts.control_chart``): a PIL image."""
    from ctgen.images.charts import control_chart

    unit = f" ({entry['unit_of_measure']})" if entry.get("unit_of_measure") else ""
    fit = (f"slope {entry['slope']:.2f}, R² {entry['r2']:.2f}" if entry.get("slope") is not None
           and entry.get("r2") is not None else "no fit")
    return control_chart(requested, measured, title=f"{factor} set on u{entry['unit']}: {fit}",
                         x_label=f"requested{unit}", y_label=f"measured on the output{unit}")


def kl_bar_chart(kl: Any, threshold: float = ACTIVE_UNIT_KL) -> Any:
    """Per-unit KL (nats, (L,)) as a bar chart (``ctgen.images.charts``): a PIL image; active units coloured."""
    from ctgen.images.charts import bar_chart

    active = sum(value > threshold for value in kl)
    return bar_chart(list(kl), title=f"KL per unit: {active} of {len(kl)} above {threshold:g} nats", x_label="unit",
                     y_label="KL (nats)", threshold=threshold)


def interpret(report: dict) -> dict:
    """One line per section, computed from the numbers of an ``evaluate_model`` report."""
    recon, activity, lines = report["reconstruction"], report["activity"], {}
    ssim = recon["ssim"]
    # the grey/white contrast is judged in the brain window: a full-range MAE is dominated by the skull's edge
    brain = recon.get("mae_hu_window", recon["mae_hu"])
    verdict = "fine contrast kept" if brain < 5 else "fine contrast partly lost" if brain < 15 else "anatomy blurred"
    structure = "close to" if ssim >= 0.9 else "short of" if ssim >= 0.6 else "far from"
    lines["reconstruction"] = (
        f"Mean error {brain:.1f} HU inside the head at brain window, {brain / 10:.1f}x the ~10 HU grey/white-matter "
        f"contrast ({verdict}); SSIM {ssim:.2f} at brain window ({structure} the original's structure).")
    kl = sorted(activity["kl_per_unit"], reverse=True)
    top = min(5, len(kl))
    share = sum(kl[:top]) / sum(kl) if sum(kl) > 0 else 0.0
    counts = (activity["active_units"], activity["active_units_by_variance"])
    differ = "" if counts[0] == counts[1] else ", the counts differ"
    lines["activity"] = (f"{counts[0]} of {len(kl)} units carry information (KL > {activity['threshold']:g} nats; "
                         f"{counts[1]} by the variance of mu{differ}); "
                         f"the top {top} hold {share:.0%} of the {activity['kl_total']:.1f} nats.")
    for key, suffix in (("disentanglement", ""), ("disentanglement_dense", "_dense")):
        scores = report.get(key) or {}
        if "mig" in scores:
            lines[f"disentanglement{suffix}"], lines[f"unit_factors{suffix}"] = _read_disentanglement(scores)
    realism = report.get("realism") or {}
    if "heldout_b" in realism:
        lines["realism"] = _read_realism(realism)
    if "factors" in (report.get("controllability") or {}):
        lines["controllability"] = _read_control(report["controllability"])
    memo = report["memorisation"]
    if "median_ratio" in memo:
        copying = memo["fraction_copied"] > max(0.05, 3 * memo["quantile"]) or memo["median_ratio"] < 0.8
        lines["memorisation"] = (
            f"Samples lie {memo['median_ratio']:.2f}x as far from their nearest training slice as held-out slices "
            f"do (median); {memo['fraction_copied']:.1%} are nearer than the {memo['quantile']:.0%} held-out quantile "
            f"(about {memo['quantile']:.0%} expected): "
            f"{'possible copying of training images, inspect samples.png' if copying else 'no sign of copying'}.")
    real = report.get("real_slices") or {}
    if real.get("mean_mae_hu") is not None:
        mae = recon["mae_hu"]
        ratio = real["mean_mae_hu"] / max(mae, 1e-6)
        lines["real_slices"] = (f"Real slices: mean error {real['mean_mae_hu']:.1f} HU, {ratio:.2f}x the "
                                f"{mae:.1f} HU on the study's {recon['set']}: " + _compare_error(ratio))
    return lines


SAME_ERROR = 0.10  # errors within ±10 % of each other read as "about the same"


def _compare_error(ratio: float) -> str:
    """How an error compares with a reference error ``ratio`` times as large, in words (one rule for all)."""
    if abs(ratio - 1.0) <= SAME_ERROR:
        return "about the same error as on the study."
    if ratio < 1.0:
        return f"{1 - ratio:.0%} less error than on the study's images."
    return f"{ratio - 1:.0%} more error than on the study's images: real scans are reproduced worse."


CONTROL_TARGET = {"slope": (0.8, 1.2), "r2": 0.8, "leakage": 0.25}  # issue 25's "Done when"


def _read_control(section: dict) -> str:
    """The controllability reading: which bound factors meet issue 25's targets, and what misses them."""
    met, missed, skipped = [], [], []
    for factor, entry in section["factors"].items():
        if entry.get("slope") is None:
            skipped.append(factor)
            continue
        misses = [f"slope {entry['slope']:.2f}" if not CONTROL_TARGET["slope"][0] <= entry["slope"]
                  <= CONTROL_TARGET["slope"][1] else "",
                  f"R² {entry['r2']:.2f}" if entry["r2"] is None or entry["r2"] < CONTROL_TARGET["r2"] else "",
                  f"{entry['leakage_max_factor']} moves {entry['leakage_max']:.2f} SD per SD"
                  if (entry.get("leakage_max") or 0) > CONTROL_TARGET["leakage"] else ""]
        misses = [text for text in misses if text]
        (missed if misses else met).append(f"{factor} ({', '.join(misses)})" if misses else factor)
    low, high = CONTROL_TARGET["slope"]
    text = (f"On {section['n_patients']} {section['set']}: {len(met)} of {len(section['factors'])} bound factors "
            f"follow their unit (slope {low:g}..{high:g}, R² >= {CONTROL_TARGET['r2']:g}, no other factor moving more "
            f"than {CONTROL_TARGET['leakage']:g} SD per SD): {', '.join(met) or 'none'}")
    if missed:
        text += f"; missed: {'; '.join(missed)}"
    if skipped:
        text += f"; not scored: {', '.join(skipped)}"
    return text + "."


def control_markdown(section: dict, say: dict) -> list[str]:
    """report.md's controllability section from ``report["controllability"]``."""
    rows, leaks = [], []
    for factor, entry in section["factors"].items():
        if "skipped" in entry:
            rows.append([factor, f"u{entry['unit']}", entry["unit_of_measure"] or "-", None, None, None, None, None,
                         entry["skipped"]])
            continue
        requested = entry["requested"]
        rows.append([factor, f"u{entry['unit']}", entry["unit_of_measure"] or "-",
                     f"{requested[0]:.3g} .. {requested[-1]:.3g}", entry["slope"], entry["r2"], entry["mae"],
                     entry["leakage_max"], f"{entry['leakage_max_factor'] or '-'}; {entry['n_sources']} sources, "
                     f"{entry['n_unmeasured']} outputs unmeasured; {entry['method']}"])
        leaks.append([factor, *(entry["leakage"].get(name) for name in section["factor_sd"])])
    parts = ["## Controllability of the bound units",
             markdown_table(["factor", "unit", "unit of measure", "requested", "slope", "R²", "MAE", "max leakage "
                             "(SD/SD)", "notes"], rows),
             f"Each bound unit set to {section['z_points']} values over ±{section['z_span']:g} standard deviations of "
             f"the training patients' measurements (BoundUnit.to_value; within what the factor can be: no negative "
             f"size, levels 0..1) on a slice of each of {section['n_patients']} "
             f"{section['set']}, decoded, and the factor measured on the output with ctgen.factors on the model grid. "
             "Slope and R² of measured against requested (1 and 1 are ideal); MAE in the factor's unit. Leakage: how "
             "far each other image factor moves, in its standard deviations over the source slices per standard "
             "deviation requested (the slope within each source slice); the largest is shown, leaving out factors "
             "that follow the requested one by definition (an area with its axes, CSF with the ventricles).",
             say.get("controllability", "")]
    if leaks:
        parts += ["### Leakage per factor (SD per SD requested)",
                  markdown_table(["requested", *section["factor_sd"]], leaks)]
    return parts


def _read_realism(realism: dict) -> str:
    """The realism reading: precision (how near images lie to real ones in a coarse feature space) and the
    anatomical check (skull ring and brain) are separate measurements, named as such, with what limits each."""
    anatomy, reference = realism["anatomy"], realism["heldout_b"]
    samples = [name[len("samples_"):] for name in realism if name.startswith("samples_")]
    precision = {name: realism[f"samples_{name}"]["precision"] for name in samples}
    failing = {name: anatomy[f"samples_{name}"]["fail_share"] for name in samples}
    text = (f"Precision (share of images whose coarse layout — 64² pixels at -50..250 HU — lies within the "
            f"{reference['k']}-nearest-neighbour radius of one of {reference['n_real']} held-out slices): "
            + ", ".join(f"{name} prior samples {value:.2f}" for name, value in precision.items())
            + f", reconstructions {realism['reconstructions']['precision']:.2f}, a second held-out half "
            f"{reference['precision']:.2f}. The anatomical check is a separate test (a closed skull ring with brain "
            "inside): " + ", ".join(f"{value:.0%} of {name} prior samples" for name, value in failing.items())
            + f" and {anatomy['heldout']['fail_share']:.0%} of held-out slices fail it.")
    if reference["n_real"] < 50 and min([reference["precision"], *precision.values()]) >= 0.9:
        text += (f" With {reference['n_real']} reference slices the neighbourhoods are wide: precision cannot tell "
                 "realistic images from others here.")
    blind = [name for name in samples if precision[name] >= 0.8 and failing[name] >= 0.5]
    if blind:
        text += (f" The {' and '.join(blind)} prior samples have the coarse layout of real slices yet lack a closed "
                 "skull with brain inside: precision does not see that, the anatomical check does.")
    if anatomy["heldout"]["fail_share"] >= 0.5:
        text += (" Most held-out slices fail the check too: it does not fit this study's slices (levels without a "
                 "closed skull ring?), so its figures say little here.")
    return text


def _read_disentanglement(scores: dict) -> tuple[str, str]:
    """The one-line readings of a disentanglement section: the scores, and which factors have a unit."""
    mig = scores["mig"]
    spread = ("each factor sits mostly in one unit" if mig >= 0.3 else "factors are partly concentrated in "
              "single units" if mig >= 0.1 else "factors are spread over several units (entangled)")
    overall = (f"On {scores['set']}: MIG {mig:.2f}: {spread}; DCI disentanglement {scores['dci_disentanglement']:.2f}, "
               f"completeness {scores['dci_completeness']:.2f}, linear R² {scores['dci_informativeness']:.2f}.")
    units, margin = scores["units"], scores["unit_factor_min_nmi"]
    tracked = [name for name, entry in units.items() if entry["nmi"] - _baseline(entry) >= margin]
    untracked = [name for name in units if name not in tracked]
    chance = max(entry["chance_nmi"] for entry in units.values())
    carried = (f"{len(tracked)} of {len(units)} factors have a unit whose normalised MI beats chance (and, for a "
               f"factor that varies only between patients, patient identity) by {margin:g} or more "
               f"({', '.join(tracked) or 'none'})" + (f"; no single unit carries {', '.join(untracked)}"
                                                      if untracked else "")
               + f" (chance level up to {chance:.2f} with {scores['n_slices']} slices"
               + ("; too few slices for these MI figures to mean much)." if chance > 0.5 else ")."))
    by_patient = {name: entry["patient_nmi"] for name, entry in units.items() if entry.get("patient_level")}
    if by_patient:
        patients = scores.get("n_patients")
        level = max(by_patient.values())
        carried += (f" Patient-level factors ({', '.join(by_patient)}) are judged against a unit that only tells the "
                    f"{patients} patients apart, which reaches normalised MI up to {level:.2f}"
                    + (f": with {patients} patients, patient-level factors cannot be told apart from patient identity."
                       if level > 1 - margin else "."))
    return overall, carried


def _baseline(entry: dict) -> float:
    """What a factor's best unit must beat: chance, or for a patient-level factor what patient identity reaches
    (reports from before issue 24 hold chance only)."""
    return entry.get("baseline_nmi", entry["chance_nmi"])


def _disentanglement_markdown(scores: dict, title: str, say: dict, suffix: str) -> list[str]:
    skipped = ", ".join(f"{name} ({why})" for name, why in scores["factors_skipped"].items()) or "none"
    labels = scores.get("unit_labels") or {}
    return [f"## {title}", markdown_table(["metric", "value"], [[name, scores[name]] for name in SCORE_NAMES]),
            f"{scores['n_slices']} slices ({scores['set']}); factors: {', '.join(scores['factors_used'])}; "
            f"skipped: {skipped}.", say[f"disentanglement{suffix}"], f"### {title}: factor → unit",
            markdown_table(["factor", "best unit", "normalised MI", "second unit", "normalised MI", "chance level",
                            "patient identity"],
                           [[name, f"u{e['unit']}", e["nmi"], f"u{e['second_unit']}", e["second_nmi"], e["chance_nmi"],
                             e.get("patient_nmi")] for name, e in scores["units"].items()]),
            "Normalised MI = I(unit; factor) / H(factor), plug-in estimate on 20 quantile bins; chance level: its "
            "expected value for an unrelated unit; patient identity: what a unit that only tells the patients apart "
            "reaches, for a factor constant within each patient ('-' for the others).", say[f"unit_factors{suffix}"],
            f"### {title}: unit → factor (every active unit)",
            markdown_table(["unit", "factor it carries best", "normalised MI", "chance level"],
                           [[f"u{unit}", e["factor"], e["nmi"], e["chance_nmi"]] for unit, e in
                            sorted(labels.items(), key=lambda item: int(item[0]))]) if labels else "No active unit."]


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats to 3 significant digits, None as '-'."""
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])


def spectra_figure(spectra: dict) -> Any:
    """Radial spectra of originals, reconstructions and samples, the sharpness bands shaded."""
    from ctgen.images.charts import spectra_chart
    from ctgen.evaluation.metrics.sharpness import BANDS, WINDOW_HU

    return spectra_chart(spectra, bands=list(BANDS.values()),
                         title=f"radial power spectra, {WINDOW_HU[0]:g}..{WINDOW_HU[1]:g} HU")


def sharpness_markdown(section: dict, originals: str) -> list[str]:
    """report.md's sharpness section from ``report["sharpness"]``; ``originals`` names their set."""
    bands = list(section["bands_cycles_per_px"])
    rows = [[name.replace("_", " "), *(ratios[band] for band in bands)]
            for name, ratios in section["band_power_ratio"].items()]
    anatomy = section["anatomy"]
    return ["## Sharpness and anatomy kept",
            markdown_table(["images", *(f"power kept {band} cycles/px" for band in bands)], rows),
            f"Power of the images over that of {section['n_originals']} originals ({originals}) in each band of the radially "
            f"averaged spectrum (images clipped to {section['window_hu'][0]:g}..{section['window_hu'][1]:g} HU): 1 keeps "
            f"the detail, less is blur. Log frequency distance of the reconstructions: "
            f"{section['log_frequency_distance']:.3f} (0: identical). Period-2 peak (power at (0.5, 0.5) | (0.5, 0) "
            "cycles/px over its 8 neighbours; about 1 without a checkerboard): " + "; ".join(
                f"{name.replace('_', ' ')} {peaks['(0.5, 0.5)']:.2f} | {peaks['(0.5, 0)']:.2f}"
                for name, peaks in section.get("period_two_peak", {}).items()) + ".",
            markdown_table(["tissue-to-CSF contrast kept", "CSF Dice inside the skull", "grey/white contrast kept",
                            "slices at ventricle levels"],
                           [[anatomy["tissue_csf_contrast_kept"], anatomy["csf_dice"],
                             anatomy["grey_white_contrast_kept"], f"{anatomy['n_ventricle_slices']} of "
                                                                  f"{anatomy['n_slices']}"]]),
            f"Reconstructions against their originals, masks from the original ({anatomy['masks']}; "
            "ctgen.evaluation.metrics.sharpness): 1 keeps the contrast, 0 is a flat grey brain."]


def render_markdown(report: dict) -> str:
    """report.md: one table per section, each followed by its interpretation."""
    model, study, say = report["model"], report["study"], report["interpretation"]
    recon, activity = report["reconstruction"], report["activity"]
    size = len(activity["kl_per_unit"])
    parts = [f"# Evaluation of model `{model['name']}`",
             f"Study `{study['path']}`: {study['evaluated']} slices of {study['patients']} patients read "
             f"({study['heldout_slices']} held out, {study['skipped_files']} skipped or unreadable) of "
             f"{study.get('slices', study['files'])} slices in {study['files']} files; "
             f"split `{study['split']}`, factors `{study['factors']}`, seed {study['seed']}. Model: latent "
             f"{model['latent_size']}, {model['image_size']}² at {model['spacing_mm']} mm, β {model['beta']}.",
             "## Reconstruction",
             markdown_table(["set", "slices", "MAE inside head (HU)", "MAE brain window (HU)", "PSNR brain window (dB)",
                             "SSIM brain window"],
                    [[recon["set"], recon["n_images"], recon["mae_hu"], recon.get("mae_hu_window", "-"),
                      recon["psnr_db"], recon["ssim"]]]),
             f"MAE against {recon['target']}; brain-window MAE with both images clipped to -50..250 HU "
             "(comparable across HU maps).", say["reconstruction"],
             "## Latent activity",
             markdown_table(["definition", "active units", "of"],
                    [[f"KL > {activity['threshold']:g} nats", activity["active_units"], size],
                     [f"Var(mu) > {activity['threshold']:g} (Burda et al.)", activity["active_units_by_variance"],
                      size]]),
             "Top units by KL (nats): " + ", ".join(f"u{u} {activity['kl_per_unit'][u]:.2f}"
                                                    for u in activity["units_by_kl"][:10]) + ".", say["activity"]]
    for key, title, suffix in (("disentanglement", "Disentanglement", ""),
                               ("disentanglement_dense", "Disentanglement on the dense set", "_dense")):
        scores = report.get(key)
        if scores is not None and "mig" in scores:
            parts += _disentanglement_markdown(scores, title, say, suffix)
        elif scores is not None:
            parts += [f"## {title}", f"Not scored: {scores['skipped']}."]
    realism = report.get("realism") or {}
    if "heldout_b" in realism:
        rows = [[name.replace("_", " "), realism[name]["precision"], realism[name]["recall"],
                 realism[name]["n_generated"]] for name in realism if isinstance(realism[name], dict)
                and "precision" in realism[name]]
        checks = [[name.replace("_", " "), entry["fail_share"], entry["skull_open"], entry["no_brain_inside"],
                   entry["n_images"]] for name, entry in realism["anatomy"].items()]
        parts += ["## Realism", markdown_table(["images", "precision", "recall", "n"], rows),
                  f"Improved precision and recall (Kynkäänniemi et al. 2019, k = {realism['heldout_b']['k']}) against "
                  f"{realism['heldout_b']['n_real']} held-out slices; feature space: {realism['feature_space']}. "
                  "'heldout b' is the other half of the held-out slices: what real images score.",
                  markdown_table(["images", "fail the anatomical check", "skull ring open", "no brain inside", "n"],
                                 checks),
                  "The check: bone >= 150 HU (gaps of one 3.75 mm pixel bridged) must enclose at least 5 % of the "
                  "head, and at least half of what it encloses must be 0..80 HU.", say["realism"]]
    if "sharpness" in report:
        parts += sharpness_markdown(report["sharpness"], recon["set"])
    control = report.get("controllability") or {}
    if "factors" in control:
        parts += control_markdown(control, say)
    elif control:
        parts += ["## Controllability of the bound units", f"Not scored: {control['skipped']}."]
    memo = report["memorisation"]
    parts.append("## Memorisation")
    if "median_ratio" in memo:
        rows = [[f"{what} → nearest training slice", *(memo[key][stat] for stat in ("median", "p5", "mean"))]
                for what, key in (("samples", "sample_to_train"), ("held-out slices", "heldout_to_train"))]
        parts += [markdown_table(["Euclidean distance", "median", "5th percentile", "mean"], rows),
                  f"{memo['n_samples']} prior samples against {memo['n_train']} slices of training patients; "
                  f"{memo['n_heldout']} held-out slices for comparison; images in the {memo['images']}, "
                  f"{memo['downsample_factor']}x downsampled ({memo['dimensions']} values).", say["memorisation"]]
    else:
        parts.append(f"Not checked: {memo['skipped']}.")
    real = report.get("real_slices")
    if real is not None:
        rows = [[row["file"], "x".join(map(str, row.get("matrix") or [])) or "-",
                 "x".join(map(str, row.get("field_of_view_mm") or [])) or "-", row.get("mae_hu"), row.get("psnr_db"),
                 row["error"] if "error" in row else row["ssim"]] for row in real["slices"]]
        parts += ["## Real CT slices (pydicom test files)",
                  markdown_table(["file", "matrix", "field of view (mm)", "MAE inside head (HU)", "PSNR (dB)", "SSIM"], rows),
                  say.get("real_slices", "No real slice could be scored.")]
    with_real = real is not None and real.get("mean_mae_hu") is not None
    figures = [name for name in REPORT_FILES[2:] if with_real or name != "real_slices.png"]
    figures += [control_figure_name(factor) for factor, entry in (control.get("factors") or {}).items()
                if "skipped" not in entry]
    return "\n\n".join(parts + ["## Figures"] + [f"![{name}]({name})" for name in figures]) + "\n"


def check_out(out: Path, force: bool) -> None:
    """Raise OutputError unless ``out`` can take a report: absent, or (with ``force``) an old report."""
    from ctgen.errors import OutputError

    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    if not force:
        raise OutputError(out, "already exists (use --force to replace it)")
    if any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise OutputError(out, "is not an evaluation report (no metrics.json): refusing to replace it")


def write_report(report: dict, figures: dict, out: Path, force: bool) -> None:
    """metrics.json, report.md and the figures into a temporary sibling folder, renamed into place at the end
    (``ctgen.io.atomic.atomic_folder``); with ``force`` an earlier report is replaced."""
    from ctgen.io.atomic import atomic_file, atomic_folder
    from ctgen.images.render import save_png

    check_out(out, force)
    with atomic_folder(out, force=force) as staging:
        with atomic_file(staging / "metrics.json", force=False, mode="w") as handle:
            handle.write(json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
        with atomic_file(staging / "report.md", force=False, mode="w") as handle:
            handle.write(render_markdown(report))
        for name, image in figures.items():
            save_png(image, staging / name)
