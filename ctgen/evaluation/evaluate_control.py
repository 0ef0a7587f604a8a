"""Controllability of a model's bound units on unseen patients (issue 25): each bound unit is set over a range
of values, the outputs decoded and its factor measured on them (``ctgen.factors``, ``ctgen.evaluation.metrics.control``).
A section of ``ctgen.evaluation.evaluate.evaluate_model``'s report.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ctgen.io.dicom.common import patient_key
from ctgen.errors import CtgenError
from ctgen.evaluation.evaluate_data import Progress, decode_latents, encode_images, header_factors
from ctgen.images.preprocess import from_model, to_grid_hu
from ctgen.io.sources import SourceReader

__all__ = ["CONTROL_PATIENTS", "controllability"]

CONTROL_PATIENTS = 200  # unseen patients whose slices each bound unit is set on (issue 25's "Done when")
SOURCE_TRIES = 5  # slices of a patient tried for one on which the bound image factors can be measured
CONTROL_SERIES_PATIENTS = 40  # of them, those whose whole series is read: series factors decode it per request
# factors that move with another by their definition, not by leakage: an area with its axes, CSF with ventricles
SAME_GEOMETRY = {"head_width_mm": ("head_area_mm2",), "head_length_mm": ("head_area_mm2",),
                 "head_area_mm2": ("head_width_mm", "head_length_mm"), "ventricle_mm2": ("csf_fraction",),
                 "csf_fraction": ("ventricle_mm2",)}


def controllability(model, sources: list, patients: list[str] | None, train_keys: set[str] | None,
                     max_patients: int, seed: int, progress: Progress, pictures: dict | None) -> dict:
    """Issue 25's controllability of each bound unit on unseen patients (``ctgen.evaluation.metrics.control``): a slice of
    each of up to ``max_patients`` held-out patients is encoded, the unit set to each of Z_POINTS values over
    ±Z_SPAN training SDs, decoded, and the factor measured on the output (model grid, ``ctgen.factors``). A
    series factor is read on a decoded series (``*_max_*``: the patient's whole series, unit set in every
    slice) or, for ``level``, off the nearest of the patient's own slices. ``pictures["control"]`` gets each
    factor's (requested, measured) points for the figures. ``sources`` name the study's slices (``FILE`` or
    ``FILE#K``, ``ctgen.evaluation.evaluate_data.study_slices``); ``patients``, their patient keys (None: from headers)."""
    from dataclasses import replace

    from ctgen.factors import FACTORS, measure_slice, physical_range
    from ctgen.evaluation.metrics import control

    bound, kinds = model.card.bound_units, {factor.name: factor.source for factor in FACTORS}
    image_names = [factor.name for factor in FACTORS if factor.source == "image"]
    if patients is None:
        patients = header_factors(sources)["patients"]
    by_patient: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        by_patient.setdefault(patient, []).append(index)
    held = sorted(p for p in by_patient if train_keys is None or not {patient_key(p), p} & train_keys)
    rng = np.random.default_rng([seed, 3])
    chosen = [held[i] for i in rng.permutation(len(held))[:max_patients]]
    with_series = set(chosen[:CONTROL_SERIES_PATIENTS]) if any(kinds.get(b.factor) == "series" for b in bound) else ()
    grid, spacing = model.grid, (float(model.grid.spacing_mm),) * 2
    bound_image = [b.factor for b in bound if kinds.get(b.factor) == "image"]

    def measurable(one) -> bool:  # a source must show the bound factors: a round vertex slice has no rotation
        return bool(np.isfinite([measure_slice(one.hu, spacing)[name] for name in bound_image]).all())

    reader = SourceReader()
    cases = []  # per patient: its slices as the model sees them (HU on the grid), model images, the source's index
    for done, patient in enumerate(chosen, 1):
        progress("reading for controllability", done, len(chosen))
        series = patient in with_series
        slices, images, good = [], [], []
        for index in (by_patient[patient] if series else rng.permutation(by_patient[patient])[:SOURCE_TRIES]):
            try:
                ct = reader.read(sources[index])
                image = grid.hu_map.to_unit(to_grid_hu(ct.hu, ct.spacing_mm, grid))
            except CtgenError:
                continue
            slices.append(replace(ct, hu=from_model(image, grid), spacing_mm=spacing, path=None))
            images.append(image)
            good.append(measurable(slices[-1]))
            if good[-1] and not series:
                break
        if slices:
            if not series:  # the first measurable slice tried, else the last
                slices, images, good = slices[-1:], images[-1:], good[-1:]
            candidates = np.flatnonzero(good) if any(good) else np.arange(len(slices))
            cases.append({"slices": slices, "images": np.stack(images), "source": int(rng.choice(candidates)),
                          "series": series})
    if not cases:
        return {"skipped": "no slice of an unseen patient could be read"}
    originals = np.array([[measure_slice(c["slices"][c["source"]].hu, spacing)[n] for n in image_names] for c in cases])
    with warnings.catch_warnings():  # a factor no source shows has no standard deviation
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nanstd(originals, axis=0) if len(cases) > 1 else np.full(len(image_names), np.nan)
    mu_source = encode_images(model, np.stack([c["images"][c["source"]] for c in cases]), progress)[0]
    section: dict[str, Any] = {
        "set": "held-out patients" if train_keys is not None else "patients of the study (no split given)",
        "n_patients": len(cases), "z_span": control.Z_SPAN, "z_points": control.Z_POINTS,
        "leakage_sd": "each factor's standard deviation over the source slices as the model sees them",
        "factor_sd": dict(zip(image_names, sd.tolist())), "factors": {}}
    for unit in bound:
        # requests stay within what the factor can be (no negative width, no level past the vertex)
        low, high = physical_range(unit.factor)
        z = np.linspace(max(-control.Z_SPAN, unit.to_z(low)), min(control.Z_SPAN, unit.to_z(high)), control.Z_POINTS)
        entry: dict[str, Any] = {"unit": unit.unit, "unit_of_measure": unit.unit_of_measure,
                                 "requested": unit.to_value(z)}
        kind = kinds.get(unit.factor)
        if kind not in ("image", "series"):
            section["factors"][unit.factor] = {**entry, "skipped": "not measurable on a decoded image: "
                                               + ("a header factor" if kind == "header" else
                                                  "not a factor that ctgen.factors measures")}
            continue
        rows = [k for k, case in enumerate(cases) if kind == "image" or case["series"]]
        levels = {k: _series_levels(cases[k]["slices"]) for k in rows} if unit.factor == "level" else {}
        if levels:  # the nearest match needs slices whose levels are known
            rows = [k for k in rows if np.isfinite(levels[k]).sum() >= 2]
        if not rows:
            section["factors"][unit.factor] = {**entry, "skipped": "needs unseen patients with a whole series"
                                               + (" whose levels can be measured" if levels else "")}
            continue
        if kind == "image" or levels:
            latents = control.set_unit(mu_source[rows], unit.unit, z).reshape(-1, model.latent_size)
            decoded = decode_latents(model, latents, progress, f"controllability: {unit.factor}")
            hu = from_model(decoded, grid).reshape(len(rows), len(z), grid.size, grid.size)
            others = np.array([[[measure_slice(one, spacing)[n] for n in image_names] for one in per] for per in hu])
            if levels:
                target = np.array([control.nearest_values(decoded.reshape(len(rows), len(z), -1)[r],
                                                          cases[k]["images"].reshape(len(cases[k]["images"]), -1),
                                                          levels[k]) for r, k in enumerate(rows)])
                entry["method"] = ("the level of the nearest (mean squared difference) of the patient's own slices, "
                                   "levels measured on its series (ctgen.factors.measure_series); resolution: one "
                                   "slice step")
            else:
                target = others[:, :, image_names.index(unit.factor)]
                entry["method"] = "measured on each decoded slice (ctgen.factors.measure_slice)"
        else:  # a series' largest size: decode the whole series with the unit set in every slice
            swept = [_sweep_series(model, cases[k], unit, z, image_names, progress) for k in rows]
            target, others = np.stack([t for t, _ in swept]), np.stack([o for _, o in swept])
            entry["method"] = ("measured on the patient's whole series decoded with the unit set in every slice "
                               "(ctgen.factors.measure_slices); other factors: their median over the series")
        requested = np.broadcast_to(entry["requested"], target.shape)
        leak = control.leakage(z, others, sd)
        follows = SAME_GEOMETRY.get(unit.factor.replace("_max", ""), ())
        counted = {n: value for n, value in zip(image_names, leak)
                   if n != unit.factor.replace("_max", "") and n not in follows and np.isfinite(value)}
        worst = max(counted, key=counted.get) if counted else None
        entry.update(control.response(requested, target), n_sources=len(rows),
                     leakage={n: value for n, value in zip(image_names, leak) if n != unit.factor.replace("_max", "")},
                     leakage_follows=list(follows), leakage_max=counted.get(worst), leakage_max_factor=worst)
        section["factors"][unit.factor] = entry
        if pictures is not None:
            pictures.setdefault("control", {})[unit.factor] = (requested.ravel(), target.ravel())
    return section


def _sweep_series(model, case: dict, unit, z: np.ndarray, names: list[str],
                  progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """One patient's whole series decoded with ``unit`` set to each of ``z`` (V,) in every slice: the unit's
    factor measured on each decoded series, float64 (V,), and the median of each of ``names`` over its slices,
    (V, K); NaN where not measured."""
    from dataclasses import replace

    from ctgen.factors import measure_slices
    from ctgen.evaluation.metrics.control import set_unit

    target, others = np.full(len(z), np.nan), np.full((len(z), len(names)), np.nan)
    mu = encode_images(model, case["images"], progress)[0]
    for v, latent in enumerate(set_unit(mu, unit.unit, z).transpose(1, 0, 2)):
        hu = from_model(decode_latents(model, latent, progress, f"controllability: {unit.factor}"), model.grid)
        measured = measure_slices([replace(one, hu=h) for one, h in zip(case["slices"], hu)])[0]
        values = np.array([[row[n] for n in [unit.factor, *names]] for row in measured], dtype=np.float64)
        with warnings.catch_warnings():  # a factor no decoded slice shows stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(values, axis=0)
        target[v], others[v] = medians[0], medians[1:]
    return target, others


def _series_levels(slices: list) -> np.ndarray:
    """Measured levels (``ctgen.factors``) of one patient's slices, float64 (n,); NaN where not measured."""
    from ctgen.factors import measure_slices

    return np.array([row["level"] for row in measure_slices(slices)[0]], dtype=np.float64)
