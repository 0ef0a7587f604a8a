"""Score an exported model on a CT study: ``evaluate_model`` -> JSON-ready metrics.

Reconstruction in HU on held-out patients, latent activity, disentanglement against a factors table
(phantom studies) or the headers, a memorisation check and pydicom's real CT slices. The numbers come from
``ctgen.evaluation.metrics``; the slices from ``evaluate_data`` (scan's selection and ``ctgen.io.sources``, as
training and ``ctgen encode`` take them); controllability from ``evaluate_control``; the card's figures and JSON
values from ``evaluate_summary``. ``ctgen evaluate`` draws the figures and writes the report. No
slice's patient or file name enters the results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.evaluation import metrics
from ctgen.images.grid_reader import DISPLAY_WINDOW_HU as WIDE_HU  # originals on the grid, unclipped: masks, pictures
from ctgen.defaults import ACTIVE_UNIT_KL
from ctgen.io.dicom.common import patient_key
from ctgen.errors import CtgenError, InputError
from ctgen.evaluation.evaluate_control import CONTROL_PATIENTS, controllability
from ctgen.evaluation.evaluate_data import (Progress, choose, decode_latents, encode_images, header_factors, load_factors,
                                 load_split, read_study, study_slices)
from ctgen.evaluation.evaluate_summary import card_metrics, json_ready, map_text, model_summary
from ctgen.latent import sample_prior
from ctgen.images.preprocess import WINDOW_DEFAULT, from_model, to_grid_hu
from ctgen.io.sources import read_source, split_source

__all__ = ["REAL_SLICES", "card_metrics", "evaluate_model", "header_factors", "load_factors"]

REAL_SLICES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")  # real CT that pydicom ships
UNIT_FACTOR_MIN_NMI = 0.2  # a unit "tracks" a factor whose normalised MI exceeds chance by this much
SAMPLES = 1000  # prior samples decoded for realism, the anatomical check and memorisation
MAX_REFERENCE = 20000  # training slices the memorisation check compares samples with (a seeded subset beyond)


def evaluate_model(model: Any, study_dir: str | os.PathLike, *, factors: str | os.PathLike | bool | None = None,
                   split: str | os.PathLike | None = None, max_slices: int = 2000, seed: int = 0, real: bool = True,
                   progress: Progress | None = None, pictures: dict | None = None,
                   dense: str | os.PathLike | None = None, max_dense: int = 2000,
                   max_control: int = CONTROL_PATIENTS) -> dict:
    """Score ``model`` (a ``ctgen.runtime.model.Model``, or a name/path for ``load_model``) on a CT study: a folder whose
    usable slices ``ctgen.io.scan`` selects (every frame of a multi-frame file, every axial slice of a NIfTI volume,
    as training and ``ctgen encode`` take them), or the slices its factors table names.

    ``factors``: the factors table (None: STUDY/factors.csv when present; False: none). ``split``: a
    training run's split.json; its validation patients (and any patient it does not list) are held
    out, and reconstruction and activity are measured on them (on every slice without a split). At most
    ``max_slices`` slices are encoded, half from held-out patients when the factors table names them;
    the memorisation check compares samples with every training slice of the study (up to
    MAX_REFERENCE). ``progress(stage, done, total)`` is called as work advances. ``pictures``: a dict
    to fill with HU float32 arrays for the figures: "samples" (32, S, S), "reconstructions" and
    "real_slices" (n, 3, S, S) original | reconstruction | difference, with "..._labels", and the
    latent (L,) of the first reconstruction, "traversal_start", with its "traversal_label"; for a model with
    bound units, "control": {factor: (requested, measured)} of the controllability check on up to
    ``max_control`` unseen patients. Same seed, same results. Returns the metrics, JSON-ready. Raises InputError,
    DicomError, ModelError.
    """
    from ctgen.runtime.model import load_model

    progress = progress or (lambda stage, done, total: None)
    study = Path(study_dir)
    if not study.is_dir():
        raise InputError(study, "not a folder (give the study's DICOM folder)")
    if not hasattr(model, "encode"):
        model = load_model(model)
    table_path = study / "factors.csv" if factors is None else None if factors is False else Path(factors)
    table = load_factors(table_path) if table_path is not None and (factors or table_path.is_file()) else None
    # slices by name (FILE or FILE#K): the table's, else every usable slice of scan's selection
    sources, skipped = ([str(table_path.parent / name) for name in table["files"]], []) if table else study_slices(study)
    if table is None and factors is None and sources:  # a real archive: the factors its headers give
        table = header_factors(sources)
        table_path = None
    if not sources:
        raise InputError(study, "no usable CT slices found (ctgen scan says why)")
    train_keys = load_split(Path(split)) if split is not None else None
    held = None
    if train_keys is not None and table is not None:
        held = np.array([patient_key(p) not in train_keys and p not in train_keys for p in table["patients"]])
        if not held.any():
            raise InputError(split, "every patient of the study is a training patient: nothing is held out")
    rng = np.random.default_rng(seed)
    chosen = choose(len(sources), max_slices, rng, held)

    grid, images, originals, is_held, kept, patients = model.grid, [], [], [], [], set()
    for index, wide, image, held_out, key in read_study(sources, chosen, grid, train_keys, skipped, progress,
                                                        "reading"):
        patients.add(key)
        images.append(image)
        is_held.append(held_out)
        kept.append(index)
        if held_out:
            originals.append(wide)
    if not images:
        raise InputError(study, f"none of the {len(chosen)} slices could be read ({skipped[-1]})")
    images, is_held, originals = np.stack(images), np.array(is_held), np.stack(originals) if originals else None
    if originals is None:
        raise InputError(split, "every evaluated slice belongs to a training patient: nothing is held out")
    mu, logvar = encode_images(model, images, progress)
    eval_set = "held-out patients" if train_keys is not None else "all slices"
    recon = decode_latents(model, mu[is_held], progress, "decoding")
    target = from_model(images[is_held], grid)  # what the model sees: the original clipped to its window
    report: dict[str, Any] = {"format": "ctgen-evaluation", "version": 1, "model": model_summary(model)}
    report["study"] = {
        "path": str(study), "factors": (str(table_path) if table_path is not None else "DICOM headers")
        if table is not None else None,
        "split": str(split) if split is not None else None, "slices": len(sources),
        "files": len({split_source(name)[0] for name in sources}) + len(skipped), "max_slices": max_slices,
        "seed": seed, "evaluated": len(images), "heldout_slices": int(is_held.sum()),
        "train_slices": int((~is_held).sum()), "patients": len(patients)}
    recon_hu, head = from_model(recon, grid), metrics.head_mask(originals)
    report["reconstruction"] = {"set": eval_set, **metrics.reconstruction_report(target, recon_hu, mask=head),
                                "mae_hu_window": metrics.mae_hu(originals, recon_hu, head, clip_hu=WINDOW_DEFAULT),
                                "mae_hu_full": metrics.mae_hu(originals, recon_hu, head),
                                "target": f"the original through the model's HU map ({map_text(grid)}); MAE inside "
                                          "the head (> -500 HU)",
                                "mae_definitions": {"mae_hu_window": "both clipped to -50..250 HU (the window of "
                                                    "version-1 cards): comparable across HU maps",
                                                    "mae_hu_full": "against the original's full HU range"}}
    report["activity"] = {"set": eval_set, "n_images": int(is_held.sum()),
                          **metrics.latent_activity(mu[is_held], logvar[is_held])}
    if table is not None:
        report["disentanglement"] = _disentanglement(mu, table, np.array(kept), seed,
                                                     metrics.kl_per_unit(mu, logvar))
    if dense is not None:
        report["disentanglement_dense"] = _dense_disentanglement(model, Path(dense), max_dense, seed, progress)
    if model.card.bound_units:
        report["controllability"] = controllability(model, sources, table["patients"] if table else None,
                                                    train_keys, max_control, seed, progress, pictures)

    priors = {"standard": sample_prior(SAMPLES, model.latent_size, seed=seed)}
    if model.prior is not None:
        priors["fitted"] = model.prior.sample(SAMPLES, seed=seed)
    decoded = {name: decode_latents(model, z, progress, f"sampling ({name} prior)") for name, z in priors.items()}
    samples = decoded["fitted" if "fitted" in decoded else "standard"]  # what `ctgen sample` draws
    samples_hu = {name: from_model(images, grid) for name, images in decoded.items()}
    report["realism"] = _realism(originals, recon_hu, samples_hu)
    report["sharpness"] = _sharpness(originals, recon_hu, samples_hu, pictures)
    report["memorisation"] = {"skipped": "needs --split (the training patients)"} if train_keys is None else \
        _memorisation(samples, next(reversed(decoded)), images, is_held, sources, held, kept, grid, train_keys, rng,
                      skipped, progress)
    report["study"]["skipped_files"] = len(skipped)
    report["study"]["skipped_examples"] = skipped[:5]
    real_rows, real_panels = _real_slices(model) if real else ([], [])
    if real:
        maes = [row["mae_hu"] for row in real_rows if "mae_hu" in row]
        report["real_slices"] = {"slices": real_rows, "mean_mae_hu": float(np.mean(maes)) if maes else None}
    if pictures is not None:
        picks = np.sort(np.random.default_rng([seed, 1]).choice(len(recon), min(6, len(recon)), replace=False))
        recon_hu = recon_hu[picks]
        pictures.update({"samples": from_model(samples[:32], grid), "reconstructions_labels": [f"#{i}" for i in picks],
                         "traversal_start": mu[is_held][picks[0]], "traversal_label": f"slice #{picks[0]} ({eval_set})",
                         "reconstructions": np.stack([originals[picks], recon_hu, recon_hu - target[picks]], axis=1),
                         "real_slices": np.stack(real_panels) if real_panels else None,
                         "real_slices_labels": [row["file"] for row in real_rows if "mae_hu" in row]})
    return json_ready(report)


def _memorisation(samples: np.ndarray, prior: str, images: np.ndarray, is_held: np.ndarray, sources: Sequence[str],
                  held: np.ndarray | None, kept: list[int], grid: Any, train_keys: set[str], rng: np.random.Generator,
                  skipped: list[str], progress: Progress) -> dict:
    """The memorisation check: samples (model units, from ``prior``) against every training slice of the study (the
    evaluated ones and up to MAX_REFERENCE read for it, not encoded), at 32 x 32: layout, not noise."""
    factor = max(1, grid.size // 32)
    reference = [metrics.downsample(image, factor) for image in images[~is_held]]
    others = np.setdiff1d(np.flatnonzero(~held) if held is not None else np.arange(len(sources)), kept)
    others = np.sort(rng.choice(others, min(len(others), max(0, MAX_REFERENCE - len(reference))), replace=False))
    for _, _, image, held_out, _ in read_study(sources, others, grid, train_keys, skipped, progress,
                                               "reading training"):
        if not held_out:
            reference.append(metrics.downsample(image, factor))
    if not reference:
        return {"skipped": "no slice of a training patient could be read"}
    scores = metrics.memorisation_report(metrics.downsample(samples, factor), np.stack(reference),
                                         metrics.downsample(images[is_held], factor))
    return {**scores, "downsample_factor": factor, "prior": prior, "images": f"model units ({map_text(grid)})"}


def _realism(real_hu: np.ndarray, recon_hu: np.ndarray, samples_hu: dict[str, np.ndarray]) -> dict:
    """Precision and recall (``ctgen.evaluation.metrics.realism``) of reconstructions and of each prior's samples against
    half the held-out slices (A); the other half (B) against A is the yardstick. Plus the anatomical check."""
    from ctgen.evaluation.metrics import realism

    section: dict[str, Any] = {"feature_space": realism.__doc__.split("The feature space, fixed before any model "
                                                                      "was scored: ")[1].split(". Precision")[0]}
    if len(real_hu) < 2 * (realism.NEIGHBOURS + 2):
        return {**section, "skipped": f"needs at least {2 * (realism.NEIGHBOURS + 2)} held-out slices"}
    space = realism.FeatureSpace(realism.realism_features(real_hu[0::2]))

    def features(hu: np.ndarray) -> np.ndarray:
        return space.transform(realism.realism_features(hu))

    reference = features(real_hu[0::2])
    section["heldout_b"] = realism.precision_recall(reference, features(real_hu[1::2]))
    section["reconstructions"] = realism.precision_recall(reference, features(recon_hu[1::2]))
    for name, hu in samples_hu.items():
        section[f"samples_{name}"] = realism.precision_recall(reference, features(hu))
    section["anatomy"] = {name: {k: v for k, v in realism.anatomy_check(hu).items() if k != "passed"}
                          for name, hu in {"heldout": real_hu, **{f"samples_{n}": h for n, h in samples_hu.items()}}.items()}
    return section


def _sharpness(originals: np.ndarray, recon_hu: np.ndarray, samples_hu: dict[str, np.ndarray],
               pictures: dict | None) -> dict:
    """Sharpness and anatomy kept (``ctgen.evaluation.metrics.sharpness``) of reconstructions and samples against the
    held-out originals; their radial spectra go to ``pictures["spectra"]`` for the figure."""
    from ctgen.evaluation.metrics import sharpness

    if pictures is not None:
        sets = {"originals": originals, "reconstructions": recon_hu, **{f"samples ({n} prior)": hu
                                                                          for n, hu in samples_hu.items()}}
        pictures["spectra"] = {name: sharpness.radial_power_spectrum(hu) for name, hu in sets.items()}
    return sharpness.sharpness_report(originals, recon_hu, samples_hu)


def _disentanglement(mu: np.ndarray, table: dict, rows: np.ndarray, seed: int, kl: np.ndarray,
                     what: str = "all evaluated slices") -> dict:
    values, names, skipped = table["values"][rows], list(table["names"]), dict(table["skipped"])
    keep = [k for k in range(values.shape[1]) if np.ptp(values[:, k]) > 0]
    skipped.update({names[k]: "constant in the evaluated slices" for k in range(len(names)) if k not in keep})
    names, values = [names[k] for k in keep], values[:, keep]
    if not names or len(mu) < 10:
        return {"skipped": "no continuous factor varies" if not names else "fewer than 10 slices",
                "factors_skipped": skipped}
    scores = metrics.disentanglement_report(mu, values, names=names, seed=seed)
    # plug-in MI of independent variables is ~ (B_z - 1)(B_v - 1) / 2N nats (Miller 1955): the chance level
    for k, codes in enumerate(metrics.discretize(values).T):
        p = np.bincount(codes) / len(codes)
        chance = (min(20, len(mu)) - 1) * (len(p) - 1) / (2 * len(mu)) / -np.sum(p[p > 0] * np.log(p[p > 0]))
        scores["units"][names[k]]["chance_nmi"] = min(1.0, float(chance))
    # a factor constant within each patient is also carried by any unit that merely tells the patients apart:
    # such a factor is judged against what patient identity alone reaches (with few patients, everything)
    patients = np.asarray(table["patients"], dtype=object)[rows]
    _, patient_index = np.unique(patients, return_inverse=True)
    for k, name in enumerate(names):
        entry = scores["units"][name]
        per_patient = np.unique(np.stack([patient_index.reshape(-1), values[:, k]], axis=1), axis=0)
        entry["patient_level"] = len(per_patient) == patient_index.max() + 1
        entry["patient_nmi"] = (metrics.identity_nmi(patient_index, values[:, k], seed=seed)
                                if entry["patient_level"] else None)
        entry["baseline_nmi"] = max(entry["chance_nmi"], entry["patient_nmi"] or 0.0)
    unit_factors: dict[str, str] = {}
    for name, entry in sorted(scores["units"].items(), key=lambda item: item[1]["baseline_nmi"] - item[1]["nmi"]):
        if entry["nmi"] - entry["baseline_nmi"] >= UNIT_FACTOR_MIN_NMI and str(entry["unit"]) not in unit_factors:
            unit_factors[str(entry["unit"])] = name
    nmi = np.asarray(scores.pop("nmi"))
    chance = np.array([scores["units"][name]["chance_nmi"] for name in names])
    unit_labels = {str(unit): {"factor": names[int(np.argmax(nmi[unit]))], "nmi": float(nmi[unit].max()),
                               "chance_nmi": float(chance[int(np.argmax(nmi[unit]))])}
                   for unit in np.flatnonzero(kl > ACTIVE_UNIT_KL)}  # every active unit: the factor it carries best
    return {**scores, "unit_factors": unit_factors, "unit_labels": unit_labels,
            "unit_factor_min_nmi": UNIT_FACTOR_MIN_NMI, "n_slices": len(mu), "n_patients": len(set(patients)),
            "set": what, "factors_used": names,
            "factors_skipped": skipped}


def _dense_disentanglement(model, folder: Path, max_slices: int, seed: int, progress: Progress) -> dict:
    """Disentanglement on a dense factor set (many patients, few slices each, at random levels): a folder with
    its own factors.csv, none of whose patients the model was trained on."""
    table = load_factors(folder / "factors.csv")
    files = [folder / name for name in table["files"]]
    chosen = np.sort(np.random.default_rng([seed, 2]).choice(len(files), min(len(files), max_slices), replace=False))
    skipped: list[str] = []
    rows, images, patients = [], [], set()
    for index, _, image, _, key in read_study(files, chosen, model.grid, None, skipped, progress, "reading dense set"):
        rows.append(index)
        images.append(image)
        patients.add(key)
    if not images:
        raise InputError(folder, "none of the dense set's slices could be read")
    mu, logvar = encode_images(model, np.stack(images), progress)
    what = f"dense set {folder.name}: {len(images)} slices of {len(patients)} patients"
    return {**_disentanglement(mu, table, np.array(rows), seed, metrics.kl_per_unit(mu, logvar), what),
            "path": str(folder), "skipped_files": len(skipped)}


def _real_slices(model) -> tuple[list[dict], list[np.ndarray]]:
    """pydicom's real CT slices: per-file scores and (3, S, S) original | recon | diff panels in HU."""
    from pydicom.data import get_testdata_file

    rows, panels, grid = [], [], model.grid
    for name in REAL_SLICES:
        try:
            path = get_testdata_file(name, download=False)
            if path is None:
                raise InputError(name, "not in this pydicom installation")
            ct = read_source(path)
            resampled = to_grid_hu(ct.hu, ct.spacing_mm, grid)  # once, for the model image and the HU
            image, hu = grid.hu_map.to_unit(resampled), np.clip(resampled, *WIDE_HU)
            recon = from_model(model.decode(model.encode(image[None, None])[0]), grid)
            target = from_model(image[None], grid)
            scores = metrics.reconstruction_report(target, recon, mask=metrics.head_mask(hu[None]))
        except CtgenError as error:
            rows.append({"file": name, "error": str(error)})
            continue
        spacing = list(ct.spacing_mm) if ct.spacing_mm else None
        rows.append({"file": name, "matrix": list(ct.hu.shape), "spacing_mm": spacing,
                     "field_of_view_mm": [round(n * s, 1) for n, s in zip(ct.hu.shape, spacing)] if spacing else None,
                     **{key: scores[key] for key in ("mae_hu", "psnr_db", "ssim")}})
        panels.append(np.stack([hu, recon[0], recon[0] - target[0]]))
    return rows, panels


