"""What ``ctgen evaluate`` reads, and how it runs the model over it.

The study's slices come from the runtime's one path: ``ctgen.io.scan``'s selection (the usable axial CT files)
and ``ctgen.io.sources`` (every frame of a multi-frame DICOM file, every axial slice of a NIfTI volume, named
``FILE#K``), as training's cache (``train.data``) and ``ctgen encode`` take them. A factors table (phantom
studies) names its slices itself; real archives get the factors their headers give. Slices are named by
source text everywhere here; no patient or file name enters the results.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ctgen.images.grid_reader import DISPLAY_WINDOW_HU as WIDE_HU  # originals on the grid, unclipped: masks, pictures
from ctgen.io.dicom.common import patient_key
from ctgen.errors import CtgenError, InputError
from ctgen.images.preprocess import Grid, to_grid_hu
from ctgen.io.sources import SourceReader, selected_sources, split_source

__all__ = ["NOT_FACTORS", "Progress", "choose", "decode_latents", "encode_images", "header_factors", "load_factors",
           "load_split", "read_study", "slice_patient", "study_slices"]

# Not factors of variation: identifiers, per-patient bookkeeping, and z_mm (the level in scanner mm: a duplicate
# of level that would make every metric punish the unit carrying both)
NOT_FACTORS = ("file", "patient_id", "slice_index", "level_start", "level_end", "z_mm", "warp_seed")
HEADER_FACTORS = ("age_years", "sex", "contrast", "kvp", "kernel", "slice_thickness_mm")
Progress = Callable[[str, int, int], None]


def study_slices(study: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Every usable slice under ``study`` by name (``ctgen.io.sources.selected_sources`` of ``ctgen.io.scan``'s
    inventory: single-frame files as they are, ``FILE#K`` for frames and volume slices; sorted by path), and
    the reason code (``ctgen.io.scan.REASONS``) of each file the selection leaves out (no paths: they can name
    patients). Raises InputError for a missing study."""
    from ctgen.io.scan import scan

    inventory = scan([study])
    return selected_sources(inventory.entries), [entry.reason for entry in inventory.skipped]


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


def header_factors(sources: Sequence[str | os.PathLike]) -> dict:
    """Factors that headers give, for archives without a factors table (same form as ``load_factors``): the
    slice's position within its series (0 .. 1, along the slice normal, then frame order), patient age (years),
    sex and contrast (1 when the series names a contrast agent: CTA), kVp, reconstruction kernel and slice
    thickness. ``sources`` name slices (``FILE`` or ``FILE#K``, as ``study_slices`` gives them); a NIfTI volume
    has none of the DICOM values (NaN), and columns missing from any slice are skipped."""
    records = [_header_record(source) for source in sources]
    by_series: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_series.setdefault(record["series"], []).append(index)
    position = [math.nan] * len(records)
    for members in by_series.values():
        ranked = sorted(members, key=lambda index: (records[index]["along_normal"], records[index]["frame"]))
        for rank, index in enumerate(ranked):
            position[index] = rank / (len(ranked) - 1) if len(ranked) > 1 else 0.5
    values = [record["values"] for record in records]
    kernels = sorted({value["kernel"] for value in values if value["kernel"]})
    columns = {"position_in_series": position}
    for name in HEADER_FACTORS:
        columns[name] = ([float(kernels.index(value["kernel"])) if value["kernel"] else math.nan for value in values]
                         if name == "kernel" else [value[name] for value in values])
    patients = [record["patient"] for record in records]
    return _factor_table([str(source) for source in sources], patients, columns, {})


def slice_patient(source: str | os.PathLike, patient_id: str, series_uid: str) -> str:
    """The patient key evaluation gives a slice (``patient_key`` of its PatientID, else of its series or folder)."""
    return patient_key(patient_id, series_uid or str(split_source(source)[0].parent))


def _header_record(source: str | os.PathLike) -> dict:
    """One slice's series, its place along the series, its patient key and its header factors."""
    from ctgen.io.nifti import is_nifti

    path, index = split_source(source)
    frame = index or 0
    if is_nifti(path):
        from ctgen.io.nifti import volume_header

        sidecar = volume_header(path).sidecar
        patient_id, series_uid = str(sidecar.get("PatientID") or ""), str(sidecar.get("SeriesInstanceUID") or "")
        values = {name: math.nan for name in HEADER_FACTORS} | {"kernel": ""}
        return {"series": series_uid or str(path), "along_normal": 0.0, "frame": frame, "values": values,
                "patient": slice_patient(source, patient_id, series_uid)}
    from ctgen.io.dicom.header import read_header
    from ctgen.factors import from_header

    header = read_header(path)
    along = float(header.instance_number or 0)
    if header.position_mm and header.orientation:
        row, col = np.array(header.orientation[:3]), np.array(header.orientation[3:])
        along = float(np.dot(header.position_mm, np.cross(row, col)))
    return {"series": header.series_uid or str(path.parent), "along_normal": along, "frame": frame,
            "values": from_header(header), "patient": slice_patient(source, header.patient_id, header.series_uid)}


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


def load_split(path: str | os.PathLike) -> set[str]:
    """The training patients of a training run's split.json. Raises InputError."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot read the split: {getattr(error, 'strerror', None) or error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("train_patients"), list):
        raise InputError(path, "not a split.json (needs a train_patients list)")
    return {str(patient) for patient in record["train_patients"]}


def choose(count: int, budget: int, rng: np.random.Generator, held: np.ndarray | None) -> np.ndarray:
    """Sorted indices of at most ``budget`` slices; half from held-out patients when they are known."""
    if held is None:
        return np.sort(rng.choice(count, min(count, budget), replace=False))
    held_idx, train_idx = np.flatnonzero(held), np.flatnonzero(~held)
    n_held = min(len(held_idx), max(1, budget // 2, budget - len(train_idx)))
    n_train = min(len(train_idx), budget - n_held)
    picked = [rng.choice(held_idx, n_held, replace=False), rng.choice(train_idx, n_train, replace=False)]
    return np.sort(np.concatenate(picked))


def read_study(sources: Sequence[str | os.PathLike], indices: Sequence[int], grid: Grid, train_keys: set[str] | None,
               skipped: list[str], progress: Progress, stage: str) -> Iterator[tuple]:
    """Yield (index, full-range HU float32 (S, S) on the model grid (head masks, pictures), model image float32
    (S, S), held out?, patient key) per readable slice of ``sources`` (``ctgen.io.sources.SourceReader``: each
    file read once); the reasons of the others go to ``skipped``."""
    reader = SourceReader()
    for done, index in enumerate(indices, 1):
        progress(stage, done, len(indices))
        try:
            ct = reader.read(sources[index])
            resampled = to_grid_hu(ct.hu, ct.spacing_mm, grid)  # once, for the model image and the HU
        except CtgenError as error:
            skipped.append(error.reason)  # not the path: file names can name patients
            continue
        image, wide = grid.hu_map.to_unit(resampled), np.clip(resampled, *WIDE_HU)
        key = slice_patient(sources[index], ct.patient_id, ct.series_uid)
        yield index, wide, image, train_keys is None or not {key, ct.patient_id} & train_keys, key


def _chunks(count: int, size: int):
    return ((start, min(start + size, count)) for start in range(0, count, max(1, size)))


def encode_images(model, images: np.ndarray, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Model images float32 (N, S, S) -> (mu, logvar), float32 (N, L) each, in chunks of the model's batches."""
    mu, logvar = np.empty((2, len(images), model.latent_size), np.float32)
    for start, stop in _chunks(len(images), 4 * model.batch_size):
        mu[start:stop], logvar[start:stop] = model.encode(images[start:stop, None])
        progress("encoding", stop, len(images))
    return mu, logvar


def decode_latents(model, z: np.ndarray, progress: Progress, stage: str) -> np.ndarray:
    """Latents (N, L) -> model images float32 (N, S, S) in [0, 1]."""
    images = np.empty((len(z), model.grid.size, model.grid.size), np.float32)
    for start, stop in _chunks(len(z), 4 * model.batch_size):
        images[start:stop] = model.decode(z[start:stop])[:, 0]
        progress(stage, stop, len(z))
    return images
