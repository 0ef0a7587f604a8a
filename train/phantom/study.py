"""A synthetic study on disk: one DICOM series per patient, factors.csv and a contact sheet.

Patient ``i`` (0-based, id ``PHANTOM-{i+1:04d}``) draws its factors, its slice levels when they are
random, and its noise from ``SeedSequence(seed, spawn_key=(i,))``: the ``i``-th child that
``SeedSequence(seed).spawn`` gives. A patient's files and rows thus depend only on the seed, its index,
the slice count and the level mode; never on the workers, the number of patients or the first patient.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from ctgen.defaults import BRAIN_WINDOW
from ctgen.errors import CtgenError, InputError, OutputError
from train.phantom.anatomy import load_anatomy
from train.phantom.render import FACTORS, MATRIX, PIXEL_MM, level_to_z_mm, render_slice, sample_patient, slice_levels

__all__ = ["CSV_COLUMNS", "LEVEL_MODES", "SHEET_PATIENTS", "generate_study", "patient_id", "render_patient"]

SHEET_PATIENTS = 16  # contact sheet: the middle slice of the run's first 16 patients ...
SHEET_SERIES_PATIENT = 0  # ... and every slice of its first patient
LEVEL_MODES = ("even", "random")
_PATIENT_FACTORS = [f.name for f in FACTORS if f.per == "patient"]
CSV_COLUMNS = ["file", "patient_id", "slice_index", "level", "z_mm", *_PATIENT_FACTORS, "level_start", "level_end",
               "warp_seed"]


def patient_id(index: int) -> str:
    """``PHANTOM-0001`` for index 0; wider from index 9999 (``PHANTOM-10000``)."""
    return f"PHANTOM-{index + 1:04d}"


@dataclass
class _Failure:
    """A ctgen error raised in a worker, carried back by value (the error types do not pickle)."""

    error: type[CtgenError]
    path: str | None
    reason: str


@dataclass
class _PatientResult:
    rows: list[dict[str, str]]
    thumbnails: dict[int, np.ndarray]  # slice index -> HU float32 (256, 256)


def render_patient(
    seed_sequence: np.random.SeedSequence, slices: int, levels: str = "even"
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Factors of one patient, its slice levels (float64, (slices,)) and its series (HU float32, (slices, 512, 512)).

    Slices are lowest first. ``levels``: "even" spaces them from level_start to level_end, "random" draws
    them uniformly in that range from the patient's stream, after its factors and before its noise.
    Raises InputError for another ``levels``.
    """
    _check_level_mode(levels)
    rng = np.random.default_rng(seed_sequence)
    patient = sample_patient(rng)
    level_values = slice_levels(patient, slices, rng if levels == "random" else None)
    hu = np.empty((slices, MATRIX, MATRIX), dtype=np.float32)
    for index, level in enumerate(level_values):
        hu[index] = render_slice({**patient, "level": float(level)}, rng)
    return patient, level_values, hu


def _check_level_mode(levels: str) -> None:
    if levels not in LEVEL_MODES:
        raise InputError(None, f"levels must be one of {', '.join(LEVEL_MODES)}, got {levels!r}")


def generate_study(
    out: str | os.PathLike,
    patients: int,
    slices: int,
    seed: int,
    *,
    levels: str = "even",
    first_patient: int = 1,
    workers: int = 2,
    force: bool = False,
    contact_sheet: bool = True,
    on_patient: Callable[[int], None] | None = None,
) -> Path:
    """Write ``patients`` series of ``slices`` slices under ``out``; return the path of factors.csv.

    The patients are numbers ``first_patient`` ... ``first_patient + patients - 1`` (1-based) of the
    seed's stream, so a run starting past another's last patient adds unseen patients to it.
    ``levels``: "even" or "random" (see ``render_patient``).
    Layout: out/PHANTOM-0001/0000.dcm ... (lowest slice first), out/factors.csv (one row per slice,
    columns CSV_COLUMNS), out/contact_sheet.png. ``on_patient(done)`` is called after each patient.
    Raises InputError for bad counts or options, OutputError when outputs exist and not ``force``.
    """
    if patients < 1 or slices < 1 or workers < 1 or first_patient < 1:
        raise InputError(None, "patients, slices, workers and first_patient must be positive, got "
                               f"{patients}, {slices}, {workers}, {first_patient}")
    if not 0 <= seed < 2**63:
        raise InputError(None, f"seed must be a non-negative integer, got {seed}")
    _check_level_mode(levels)
    out = Path(out)
    first = first_patient - 1
    table, sheet = out / "factors.csv", out / "contact_sheet.png"
    if not force:
        for path in (table, sheet, out / patient_id(first)):
            if path.exists():
                raise OutputError(path, "already exists; pass force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    # the child that SeedSequence(seed).spawn(n)[index] would give, without spawning the ones before it
    jobs = [(index, np.random.SeedSequence(seed, spawn_key=(index,)), slices, levels, seed, str(out), force,
             _thumbnail_slices(index - first, slices)) for index in range(first, first + patients)]

    load_anatomy()  # once, before forking: the workers share it
    results: list[_PatientResult] = []
    if workers == 1 or patients == 1:
        outcomes = map(_write_patient, jobs)
        _collect(outcomes, results, on_patient)
    else:
        # fork: the workers share the anatomy built above instead of each building their own
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(min(workers, patients)) as pool:
            _collect(pool.imap(_write_patient, jobs, chunksize=1), results, on_patient)

    _write_csv(table, [row for result in results for row in result.rows])
    if contact_sheet:
        _write_contact_sheet(sheet, results, seed, first)
    return table


def _thumbnail_slices(position: int, slices: int) -> list[int]:
    """Slices of the run's patient at ``position`` (0-based) that the contact sheet shows."""
    if position == SHEET_SERIES_PATIENT:
        return list(range(slices))
    return [slices // 2] if position < SHEET_PATIENTS else []


def _collect(outcomes, results: list[_PatientResult], on_patient) -> None:
    for outcome in outcomes:
        if isinstance(outcome, _Failure):
            raise outcome.error(outcome.path, outcome.reason)
        results.append(outcome)
        if on_patient:
            on_patient(len(results))


def _write_patient(job) -> _PatientResult | _Failure:
    try:
        return _render_and_write(*job)
    except CtgenError as exc:
        return _Failure(type(exc), getattr(exc, "path", None), getattr(exc, "reason", str(exc)))


STUDY_DATE = datetime(2000, 1, 1, 12, 0, 0)


def _render_and_write(index, seed_sequence, slices, level_mode, seed, out, force, wanted) -> _PatientResult:
    from ctgen.io.dicom import write_series

    pid = patient_id(index)
    patient, levels, hu = render_patient(seed_sequence, slices, level_mode)
    corner = (0.5 - MATRIX / 2) * PIXEL_MM  # centre of the first pixel; the field of view is centred on 0
    z_mm = [level_to_z_mm({**patient, "level": float(level)}) for level in levels]
    positions = [(corner, corner, z) for z in z_mm]
    # Random levels are other pixels than even ones: other UIDs (even mode keeps the UIDs it always had)
    variant = [] if level_mode == "even" else [f"{level_mode} levels"]
    entropy = ["ctgen.train.phantom", str(seed), pid, *variant]
    write_series(
        hu, Path(out) / pid, spacing_mm=PIXEL_MM, positions_mm=positions, orientation=(1, 0, 0, 0, 1, 0),
        description="ctgen synthetic brain CT phantom",
        derivation=", ".join([f"train.phantom seed {seed}", pid, *variant]),
        patient_id=pid, patient_name=f"PHANTOM^{index + 1:04d}", window=BRAIN_WINDOW, force=force,
        study_uid=generate_uid(entropy_srcs=[*entropy, "study"]),
        series_uid=generate_uid(entropy_srcs=[*entropy, "series"]),
        timestamp=STUDY_DATE,  # fixed, so the same seed gives byte-identical files
    )
    rows = []
    for slice_index, (level, z) in enumerate(zip(levels, z_mm)):
        row = {"file": f"{pid}/{slice_index:04d}.dcm", "patient_id": pid, "slice_index": str(slice_index),
               "level": _format(level), "z_mm": _format(z)}
        row.update({name: _format(patient[name]) for name in CSV_COLUMNS[5:]})
        rows.append(row)
    thumbnails = {k: hu[k].reshape(MATRIX // 2, 2, MATRIX // 2, 2).mean(axis=(1, 3)) for k in wanted}
    return _PatientResult(rows, thumbnails)


def _format(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{float(value):.6f}"


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(path, f"cannot write: {exc.strerror or exc}") from exc


def _write_contact_sheet(path: Path, results: list[_PatientResult], seed: int, first: int) -> None:
    """Middle slices of up to 16 patients (4 x 4) beside every slice of the first patient, brain window.

    ``results`` are in run order; ``first`` is the 0-based index of the run's first patient.
    """
    from ctgen.images.render import WINDOWS, grid_image, hconcat, save_png

    middles = [(i, tile) for i, result in enumerate(results[:SHEET_PATIENTS]) for k, tile in
               sorted(result.thumbnails.items()) if k == len(result.rows) // 2]
    cols = min(4, len(middles))
    rows = -(-len(middles) // cols)
    blank = np.full((MATRIX // 2, MATRIX // 2), -1000.0, dtype=np.float32)
    tiles = [tile for _, tile in middles] + [blank] * (rows * cols - len(middles))
    start, end = patient_id(first + middles[0][0]), patient_id(first + middles[-1][0])
    left = grid_image(np.stack(tiles), WINDOWS["brain"], rows=rows, cols=cols,
                      title=f"middle slices of {start} to {end} (seed {seed}), row by row")
    series = results[SHEET_SERIES_PATIENT]
    count = len(series.rows)
    series_cols = min(7, count)
    series_rows = -(-count // series_cols)
    series_tiles = [series.thumbnails[k] for k in range(count)] + [blank] * (series_rows * series_cols - count)
    right = grid_image(np.stack(series_tiles), WINDOWS["brain"], rows=series_rows, cols=series_cols,
                       title=f"{patient_id(first + SHEET_SERIES_PATIENT)}: all {count} slices, level "
                             f"{series.rows[0]['level'][:4]} to {series.rows[-1]['level'][:4]}")
    save_png(hconcat([left, right], gap=8), path, force=True)
