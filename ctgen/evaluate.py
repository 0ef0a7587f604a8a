"""Score an exported model on a CT study: ``evaluate_model`` -> JSON-ready metrics.

Reconstruction in HU on held-out patients, latent activity, disentanglement against a factors table
(phantom studies), a memorisation check and pydicom's real CT slices. The numbers come from
``ctgen.metrics``; this module chooses the slices and runs the model; ``ctgen evaluate`` draws the
figures and writes the report. No slice's patient or file name enters the results.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ctgen import metrics
from ctgen.defaults import ACTIVE_UNIT_KL
from ctgen.dicom.common import patient_key
from ctgen.errors import CtgenError, InputError
from ctgen.latent import sample_prior
from ctgen.metrics.disentangle import SCORE_NAMES
from ctgen.api import DISPLAY_WINDOW_HU as WIDE_HU  # originals on the grid, unclipped: masks, pictures
from ctgen.preprocess import WINDOW_DEFAULT, Grid, from_model, to_grid_hu

__all__ = ["REAL_SLICES", "card_metrics", "evaluate_model", "load_factors"]

REAL_SLICES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")  # real CT that pydicom ships
# Not factors of variation: identifiers, per-patient bookkeeping, and z_mm (the level in scanner mm: a duplicate
# of level that would make every metric punish the unit carrying both)
NOT_FACTORS = ("file", "patient_id", "slice_index", "level_start", "level_end", "z_mm", "warp_seed")
UNIT_FACTOR_MIN_NMI = 0.2  # a unit "tracks" a factor whose normalised MI exceeds chance by this much
SAMPLES = 1000  # prior samples decoded for realism, the anatomical check and memorisation
MAX_REFERENCE = 20000  # training slices the memorisation check compares samples with (a seeded subset beyond)
CONTROL_PATIENTS = 200  # unseen patients whose slices each bound unit is set on (issue 25's "Done when")
# what each measured factor can be (ctgen.factors); the others are sizes, counts and noise: 0 and up
PHYSICAL_RANGE = {"rotation_deg": (-90.0, 90.0), "brain_hu": (-math.inf, math.inf), "level": (0.0, 1.0),
                  "csf_fraction": (0.0, 1.0), "enhancing_fraction": (0.0, 1.0)}
SOURCE_TRIES = 5  # slices of a patient tried for one on which the bound image factors can be measured
CONTROL_SERIES_PATIENTS = 40  # of them, those whose whole series is read: series factors decode it per request
# factors that move with another by their definition, not by leakage: an area with its axes, CSF with ventricles
SAME_GEOMETRY = {"head_width_mm": ("head_area_mm2",), "head_length_mm": ("head_area_mm2",),
                 "head_area_mm2": ("head_width_mm", "head_length_mm"), "ventricle_mm2": ("csf_fraction",),
                 "csf_fraction": ("ventricle_mm2",)}
Progress = Callable[[str, int, int], None]


def load_factors(path: str | os.PathLike) -> dict:
    """A factors table (CSV: ``file`` relative to the table's folder, ``patient_id``, one column per factor).

    Returns {"files": [str], "patients": [str], "names": [str], "values": float64 (N, K), "skipped":
    {column: reason}}. Only continuous factors are kept: NOT_FACTORS, non-numeric, constant and
    two-valued columns are skipped. Raises InputError.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, f"cannot read the factors table: {getattr(error, 'strerror', None) or error}") from None
    if not rows or "file" not in rows[0]:
        raise InputError(path, "a factors table needs a 'file' column and at least one row")
    columns, skipped = {}, {}
    for name in rows[0]:
        if name in NOT_FACTORS:
            if name not in ("file", "patient_id"):
                skipped[name] = "bookkeeping"
            continue
        try:
            columns[name] = [float(row[name]) for row in rows]
        except (TypeError, ValueError):
            skipped[name] = "not numeric"
    return _factor_table([row["file"] for row in rows], [row.get("patient_id") or "" for row in rows], columns,
                         skipped)


def header_factors(files: list[Path]) -> dict:
    """Factors that DICOM headers give, for archives without a factors table (same form as ``load_factors``):
    the slice's position within its series (0 .. 1, along the slice normal), patient age (years), sex and
    contrast (1 when the series names a contrast agent: CTA), kVp, reconstruction kernel and slice thickness.
    Files are given relative to nothing (absolute paths); columns missing from any header are skipped."""
    from ctgen.dicom.header import read_header
    from ctgen.factors import from_header

    headers = [read_header(path) for path in files]
    by_series: dict[str, list[int]] = {}
    for index, header in enumerate(headers):
        by_series.setdefault(header.series_uid or str(Path(header.path).parent), []).append(index)
    position = [math.nan] * len(headers)
    for members in by_series.values():
        def along_normal(index: int) -> float:
            header = headers[index]
            if header.position_mm and header.orientation:
                row, col = np.array(header.orientation[:3]), np.array(header.orientation[3:])
                return float(np.dot(header.position_mm, np.cross(row, col)))
            return float(header.instance_number or 0)

        ranked = sorted(members, key=along_normal)
        for rank, index in enumerate(ranked):
            position[index] = rank / (len(ranked) - 1) if len(ranked) > 1 else 0.5
    values = [from_header(header) for header in headers]
    kernels = sorted({value["kernel"] for value in values if value["kernel"]})
    columns = {"position_in_series": position}
    for name in ("age_years", "sex", "contrast", "kvp", "kernel", "slice_thickness_mm"):
        columns[name] = ([float(kernels.index(value["kernel"])) if value["kernel"] else math.nan for value in values]
                         if name == "kernel" else [value[name] for value in values])
    patients = [patient_key(header.patient_id, header.series_uid) for header in headers]
    return _factor_table([str(path) for path in files], patients, columns, {})


def _factor_table(files: list[str], patients: list[str], columns: dict[str, list[float]],
                  skipped: dict[str, str]) -> dict:
    names, kept = [], []
    for name, values in columns.items():
        column = np.array(values, dtype=np.float64)
        distinct = len(np.unique(column[np.isfinite(column)]))
        if not np.isfinite(column).all() or distinct <= 2:
            skipped[name] = "not finite" if not np.isfinite(column).all() else "constant" if distinct <= 1 else "binary"
            continue
        names.append(name)
        kept.append(column)
    values = np.stack(kept, axis=1) if kept else np.zeros((len(files), 0))
    return {"files": files, "patients": patients, "names": names, "values": values, "skipped": skipped}


def _load_split(path: Path) -> set[str]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot read the split: {getattr(error, 'strerror', None) or error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("train_patients"), list):
        raise InputError(path, "not a split.json (needs a train_patients list)")
    return {str(patient) for patient in record["train_patients"]}


def _choose(count: int, budget: int, rng: np.random.Generator, held: np.ndarray | None) -> np.ndarray:
    """Sorted indices of at most ``budget`` slices; half from held-out patients when they are known."""
    if held is None:
        return np.sort(rng.choice(count, min(count, budget), replace=False))
    held_idx, train_idx = np.flatnonzero(held), np.flatnonzero(~held)
    n_held = min(len(held_idx), max(1, budget // 2, budget - len(train_idx)))
    n_train = min(len(train_idx), budget - n_held)
    picked = [rng.choice(held_idx, n_held, replace=False), rng.choice(train_idx, n_train, replace=False)]
    return np.sort(np.concatenate(picked))


def _read(files: list[Path], indices: Any, grid: Grid, train_keys: set[str] | None, skipped: list[str],
          progress: Progress, stage: str):
    """Yield (index, full-range HU float32 (S, S) on the model grid (head masks, pictures), model image float32
    (S, S), held out?, patient key) per readable file; the reasons of the others go to ``skipped``."""
    from ctgen.dicom import read_slice

    for done, index in enumerate(indices, 1):
        progress(stage, done, len(indices))
        try:
            ct = read_slice(files[index])
            resampled = to_grid_hu(ct.hu, ct.spacing_mm, grid)  # once, for the model image and the HU
        except CtgenError as error:
            skipped.append(error.reason)  # not the path: file names can name patients
            continue
        image, wide = grid.hu_map.to_unit(resampled), np.clip(resampled, *WIDE_HU)
        key = patient_key(ct.patient_id, ct.series_uid or str(Path(files[index]).parent))
        yield index, wide, image, train_keys is None or not {key, ct.patient_id} & train_keys, key


def _chunks(count: int, size: int):
    return ((start, min(start + size, count)) for start in range(0, count, max(1, size)))


def _encode(model, images: np.ndarray, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    mu, logvar = np.empty((2, len(images), model.latent_size), np.float32)
    for start, stop in _chunks(len(images), 4 * model.batch_size):
        mu[start:stop], logvar[start:stop] = model.encode(images[start:stop, None])
        progress("encoding", stop, len(images))
    return mu, logvar


def _decode(model, z: np.ndarray, progress: Progress, stage: str) -> np.ndarray:
    """Latents (N, L) -> model images float32 (N, S, S) in [0, 1]."""
    images = np.empty((len(z), model.grid.size, model.grid.size), np.float32)
    for start, stop in _chunks(len(z), 4 * model.batch_size):
        images[start:stop] = model.decode(z[start:stop])[:, 0]
        progress(stage, stop, len(z))
    return images


def evaluate_model(model: Any, study_dir: str | os.PathLike, *, factors: str | os.PathLike | bool | None = None,
                   split: str | os.PathLike | None = None, max_slices: int = 2000, seed: int = 0, real: bool = True,
                   progress: Progress | None = None, pictures: dict | None = None,
                   dense: str | os.PathLike | None = None, max_dense: int = 2000,
                   max_control: int = CONTROL_PATIENTS) -> dict:
    """Score ``model`` (a ``ctgen.model.Model``, or a name/path for ``load_model``) on a DICOM study.

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
    from ctgen.dicom import iter_dicom_files
    from ctgen.model import load_model

    progress = progress or (lambda stage, done, total: None)
    study = Path(study_dir)
    if not study.is_dir():
        raise InputError(study, "not a folder (give the study's DICOM folder)")
    if not hasattr(model, "encode"):
        model = load_model(model)
    table_path = study / "factors.csv" if factors is None else None if factors is False else Path(factors)
    table = load_factors(table_path) if table_path is not None and (factors or table_path.is_file()) else None
    files = [table_path.parent / name for name in table["files"]] if table else list(iter_dicom_files([study]))
    if table is None and factors is None and files:  # a real archive: the factors its headers give
        table = header_factors(files)
        table_path = None
    if not files:
        raise InputError(study, "no DICOM files found")
    train_keys = _load_split(Path(split)) if split is not None else None
    held = None
    if train_keys is not None and table is not None:
        held = np.array([patient_key(p) not in train_keys and p not in train_keys for p in table["patients"]])
        if not held.any():
            raise InputError(split, "every patient of the study is a training patient: nothing is held out")
    rng = np.random.default_rng(seed)
    chosen = _choose(len(files), max_slices, rng, held)

    grid, images, originals, is_held, kept, skipped, patients = model.grid, [], [], [], [], [], set()
    for index, wide, image, held_out, key in _read(files, chosen, grid, train_keys, skipped, progress, "reading"):
        patients.add(key)
        images.append(image)
        is_held.append(held_out)
        kept.append(index)
        if held_out:
            originals.append(wide)
    if not images:
        raise InputError(study, f"none of the {len(chosen)} slices could be read ({skipped[0]})")
    images, is_held, originals = np.stack(images), np.array(is_held), np.stack(originals) if originals else None
    if originals is None:
        raise InputError(split, "every evaluated slice belongs to a training patient: nothing is held out")
    mu, logvar = _encode(model, images, progress)
    eval_set = "held-out patients" if train_keys is not None else "all slices"
    recon = _decode(model, mu[is_held], progress, "decoding")
    target = from_model(images[is_held], grid)  # what the model sees: the original clipped to its window
    report: dict[str, Any] = {"format": "ctgen-evaluation", "version": 1, "model": _model_summary(model)}
    report["study"] = {
        "path": str(study), "factors": (str(table_path) if table_path is not None else "DICOM headers")
        if table is not None else None,
        "split": str(split) if split is not None else None, "files": len(files), "max_slices": max_slices,
        "seed": seed, "evaluated": len(images), "heldout_slices": int(is_held.sum()),
        "train_slices": int((~is_held).sum()), "patients": len(patients)}
    recon_hu, head = from_model(recon, grid), metrics.head_mask(originals)
    report["reconstruction"] = {"set": eval_set, **metrics.reconstruction_report(target, recon_hu, mask=head),
                                "mae_hu_window": metrics.mae_hu(originals, recon_hu, head, clip_hu=WINDOW_DEFAULT),
                                "mae_hu_full": metrics.mae_hu(originals, recon_hu, head),
                                "target": f"the original through the model's HU map ({_map_text(grid)}); MAE inside "
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
        report["controllability"] = _controllability(model, files, table["patients"] if table else None, train_keys,
                                                     max_control, seed, progress, pictures)

    priors = {"standard": sample_prior(SAMPLES, model.latent_size, seed=seed)}
    if model.prior is not None:
        priors["fitted"] = model.prior.sample(SAMPLES, seed=seed)
    decoded = {name: _decode(model, z, progress, f"sampling ({name} prior)") for name, z in priors.items()}
    samples = decoded["fitted" if "fitted" in decoded else "standard"]  # what `ctgen sample` draws
    samples_hu = {name: from_model(images, grid) for name, images in decoded.items()}
    report["realism"] = _realism(originals, recon_hu, samples_hu)
    report["sharpness"] = _sharpness(originals, recon_hu, samples_hu, pictures)
    report["memorisation"] = {"skipped": "needs --split (the training patients)"}
    if train_keys is not None:
        factor = max(1, grid.size // 32)  # memorisation compares 32 x 32 pictures: layout, not noise
        reference = [metrics.downsample(image, factor) for image in images[~is_held]]
        others = np.setdiff1d(np.flatnonzero(~held) if held is not None else np.arange(len(files)), kept)
        others = np.sort(rng.choice(others, min(len(others), max(0, MAX_REFERENCE - len(reference))), replace=False))
        for _, _, image, held_out, _ in _read(files, others, grid, train_keys, skipped, progress, "reading training"):
            if not held_out:
                reference.append(metrics.downsample(image, factor))
        if reference:
            scores = metrics.memorisation_report(metrics.downsample(samples, factor), np.stack(reference),
                                                 metrics.downsample(images[is_held], factor))
            report["memorisation"] = {**scores, "downsample_factor": factor, "prior": next(reversed(decoded)),
                                      "images": f"model units ({_map_text(grid)})"}
        else:
            report["memorisation"] = {"skipped": "no slice of a training patient could be read"}
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
    return _json_ready(report)


def _map_text(grid: Grid) -> str:
    hu_map = grid.hu_map
    if hu_map.is_window:
        return f"window {hu_map.hu[0]:g}..{hu_map.hu[1]:g} HU, clipped"
    return "HU map " + ", ".join(f"{hu:g}->{unit:g}" for hu, unit in zip(hu_map.hu, hu_map.unit))


def _realism(real_hu: np.ndarray, recon_hu: np.ndarray, samples_hu: dict[str, np.ndarray]) -> dict:
    """Precision and recall (``ctgen.metrics.realism``) of reconstructions and of each prior's samples against
    half the held-out slices (A); the other half (B) against A is the yardstick. Plus the anatomical check."""
    from ctgen.metrics import realism

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
    """Sharpness and anatomy kept (``ctgen.metrics.sharpness``) of reconstructions and samples against the
    held-out originals; their radial spectra go to ``pictures["spectra"]`` for the figure."""
    from ctgen.metrics import sharpness

    if pictures is not None:
        sets = {"originals": originals, "reconstructions": recon_hu, **{f"samples ({n} prior)": hu
                                                                          for n, hu in samples_hu.items()}}
        pictures["spectra"] = {name: sharpness.radial_power_spectrum(hu) for name, hu in sets.items()}
    return sharpness.sharpness_report(originals, recon_hu, samples_hu)


def _model_summary(model) -> dict:
    card = model.card
    return {"name": card.get("name"), "path": _display_path(model.path), "latent_size": model.latent_size,
            "image_size": model.grid.size, "spacing_mm": model.grid.spacing_mm,
            "window_hu": list(model.grid.window_hu), "beta": card.get("beta"),
            "encoder_sha256": ((card.get("files") or {}).get("encoder.onnx") or {}).get("sha256")}


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
    for index, _, image, _, key in _read(files, chosen, model.grid, None, skipped, progress, "reading dense set"):
        rows.append(index)
        images.append(image)
        patients.add(key)
    if not images:
        raise InputError(folder, "none of the dense set's slices could be read")
    mu, logvar = _encode(model, np.stack(images), progress)
    what = f"dense set {folder.name}: {len(images)} slices of {len(patients)} patients"
    return {**_disentanglement(mu, table, np.array(rows), seed, metrics.kl_per_unit(mu, logvar), what),
            "path": str(folder), "skipped_files": len(skipped)}


def _controllability(model, files: list[Path], patients: list[str] | None, train_keys: set[str] | None,
                     max_patients: int, seed: int, progress: Progress, pictures: dict | None) -> dict:
    """Issue 25's controllability of each bound unit on unseen patients (``ctgen.metrics.control``): a slice of
    each of up to ``max_patients`` held-out patients is encoded, the unit set to each of Z_POINTS values over
    ±Z_SPAN training SDs, decoded, and the factor measured on the output (model grid, ``ctgen.factors``). A
    series factor is read on a decoded series (``*_max_*``: the patient's whole series, unit set in every
    slice) or, for ``level``, off the nearest of the patient's own slices. ``pictures["control"]`` gets each
    factor's (requested, measured) points for the figures."""
    from dataclasses import replace

    from ctgen.dicom import read_slice
    from ctgen.factors import FACTORS, measure_slice
    from ctgen.metrics import control

    bound, kinds = model.card.bound_units, {factor.name: factor.source for factor in FACTORS}
    image_names = [factor.name for factor in FACTORS if factor.source == "image"]
    if patients is None:
        from ctgen.dicom.header import read_header

        headers = [read_header(path) for path in files]
        patients = [patient_key(header.patient_id, header.series_uid or str(Path(path).parent))
                    for header, path in zip(headers, files)]
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

    cases = []  # per patient: its slices as the model sees them (HU on the grid), model images, the source's index
    for done, patient in enumerate(chosen, 1):
        progress("reading for controllability", done, len(chosen))
        series = patient in with_series
        slices, images, good = [], [], []
        for index in (by_patient[patient] if series else rng.permutation(by_patient[patient])[:SOURCE_TRIES]):
            try:
                ct = read_slice(files[index])
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
    mu_source = _encode(model, np.stack([c["images"][c["source"]] for c in cases]), progress)[0]
    section: dict[str, Any] = {
        "set": "held-out patients" if train_keys is not None else "patients of the study (no split given)",
        "n_patients": len(cases), "z_span": control.Z_SPAN, "z_points": control.Z_POINTS,
        "leakage_sd": "each factor's standard deviation over the source slices as the model sees them",
        "factor_sd": dict(zip(image_names, sd.tolist())), "factors": {}}
    for unit in bound:
        # requests stay within what the factor can be (no negative width, no level past the vertex)
        low, high = PHYSICAL_RANGE.get(unit.factor, (0.0, math.inf))
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
            decoded = _decode(model, latents, progress, f"controllability: {unit.factor}")
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
    from ctgen.metrics.control import set_unit

    target, others = np.full(len(z), np.nan), np.full((len(z), len(names)), np.nan)
    mu = _encode(model, case["images"], progress)[0]
    for v, latent in enumerate(set_unit(mu, unit.unit, z).transpose(1, 0, 2)):
        hu = from_model(_decode(model, latent, progress, f"controllability: {unit.factor}"), model.grid)
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


def _real_slices(model) -> tuple[list[dict], list[np.ndarray]]:
    """pydicom's real CT slices: per-file scores and (3, S, S) original | recon | diff panels in HU."""
    from pydicom.data import get_testdata_file

    from ctgen.dicom import read_slice

    rows, panels, grid = [], [], model.grid
    for name in REAL_SLICES:
        try:
            path = get_testdata_file(name, download=False)
            if path is None:
                raise InputError(name, "not in this pydicom installation")
            ct = read_slice(path)
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


# --- report ---------------------------------------------------------------------------------------


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


def _display_path(path: Path) -> str:
    """Relative to the working folder when inside it: reports get committed and shared."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _json_ready(value: Any) -> Any:
    """Python floats/ints/lists; NaN and infinity become None (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value

