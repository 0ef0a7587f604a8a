"""Training data: an archive -> its selection (``ctgen.io.scan``) -> a preprocessed slice cache on disk, and the
patient-level split.

The cache is built once with the runtime's own code (``ctgen.io.scan`` selects the usable axial CT slices,
``ctgen.io.sources.read_slices`` reads them as ``ctgen encode`` and ``ctgen evaluate`` do, ``ctgen.images.preprocess.to_model``
resamples and windows) and reused until its inputs change. Layout of ``<cache_root>/<key[:16]>/``:

    images.f16       raw float16 (N, S, S), C order, values in [0, 1] (the model's window)
    manifest.jsonl   one JSON object per slice, in image order: index, file, frame, patient (the split key of
                     --split-by auto), patient_id_key (--split-by patient), study (--split-by study), series:
                     hashes, never the IDs; position_mm, orientation, instance_number, slice_thickness_mm,
                     brain_fraction
    factors.f32      raw float32 (N, F), C order: the measured factors (``ctgen.factors``) of every slice, NaN
                     where not measured; their names are info.json's "factors" (none with the "window" HU map)
    inventory.jsonl  the selection: one row per file of the archive with its reason code (``ctgen scan --out``)
    info.json        key, grid card, slice/patient/file counts, the selection's summary (files by reason, the
                     warnings about patient keys), files that failed to read; written last (complete marker)

The key hashes every file under the sources (absolute path, size, mtime), the Grid, CACHE_VERSION and the
source of the modules that select, read, preprocess and measure, so editing that code or touching an input
rebuilds it.

Factors are measured on the cached image itself, turned back into HU by the grid's (invertible) HU map, at the
grid's spacing: the very pixels the model sees, and the grid at which decoder outputs are measured when a bound
unit's control is checked. Series factors (level, head_*_max_*) group the cached slices by series. With the
"window" map (HU clipped to -50..250) air and bone are lost, so nothing is measured.

Brain-slice rule (``brain_fraction``, used by ``--filter-brain``; ``ctgen.images.geometry.brain_fraction``): the
fraction of the head (HU > -500) that is brain-range tissue (0..80 HU) enclosed by bone (HU >= 300 with its
holes filled). Slices below the skull base (open bone ring, soft tissue of face and neck) and above the
vertex score near 0; mid-brain slices score well above the default threshold BRAIN_FRACTION_MIN.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ctgen.errors import InputError, OutputError
from ctgen.factors import FACTORS
from ctgen.images.geometry import BODY_THRESHOLD_HU, BRAIN_FRACTION_MIN, BRAIN_HU, BONE_HU_MIN
from ctgen.images.geometry import brain_fraction  # the runtime's rule, so that training and ctgen agree
from ctgen.images.preprocess import Grid
from ctgen.io.scan import SPLIT_BY

__all__ = [
    "CACHE_VERSION",
    "FACTOR_NAMES",
    "BRAIN_FRACTION_MIN",
    "SliceCache",
    "brain_fraction",
    "build_cache",
    "cache_key",
    "derived_seed",
    "describe_selection",
    "list_inputs",
    "measure_cache",
    "open_cache",
    "split_patients",
    "split_indices",
]

CACHE_VERSION = 3
# the factors measured on cached slices: those of the image and of the series (the header's are not cached)
FACTOR_NAMES = tuple(factor.name for factor in FACTORS if factor.source in ("image", "series"))
FACTORS_MEASURED_ON = "the cached image in HU (the grid's HU map inverted), at the grid's spacing"
_SPLIT_FIELDS = {"auto": "patient", "patient": "patient_id_key", "study": "study"}


def _check_split_by(mode: str) -> str:
    """``mode`` when it is one of SPLIT_BY: "auto" (PatientID; the study when the ID is empty; ID, birth date and
    sex when one ID holds different people), "patient" or "study". Raises InputError."""
    if mode not in SPLIT_BY:
        raise InputError(None, f"--split-by must be one of {', '.join(SPLIT_BY)}, got {mode!r}")
    return mode


def _preprocess_fingerprint() -> str:
    """sha256 hex of the code that decides which slices exist and how they look: every module of ctgen's reading,
    image and factor packages (``ctgen/io``, ``ctgen/images``, ``ctgen/factors``, at any depth) and the shared facts
    (``ctgen/defaults.py``). Derived from the folders, so that a module added there is covered; a change to a
    writer or a chart there rebuilds the cache too, which costs minutes, where a stale cache would cost a run."""
    import ctgen

    root = Path(ctgen.__file__).parent
    files = [root / "defaults.py", *(path for package in ("io", "images", "factors")
                                      for path in sorted((root / package).rglob("*.py")))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def list_inputs(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Every file under the source folders/files (recursive, any names; ``ctgen.io.scan.list_files``), as sorted
    absolute paths. Raises InputError for a missing source or when there is no file at all."""
    from ctgen.io.scan import list_files

    files = list_files(sources)
    if not files:
        raise InputError(", ".join(map(str, sources)), "no files found")
    return files


def cache_key(files: Sequence[Path], grid: Grid) -> str:
    """sha256 hex of the inputs (path, size, mtime), the grid and the preprocessing code."""
    digest = hashlib.sha256()
    header = {"cache_version": CACHE_VERSION, "grid": grid.to_card(), "code": _preprocess_fingerprint()}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@dataclass
class SliceCache:
    """An opened cache: ``images`` float16 memmap (N, S, S) in [0, 1], one manifest record per image, and
    ``info`` (info.json: counts, grid, the selection)."""

    path: Path
    images: np.ndarray
    records: list[dict[str, Any]]
    info: dict[str, Any]
    split_by: str = "auto"  # which key ``patients`` gives: see ``split_by``

    @property
    def grid(self) -> Grid:
        return Grid.from_card(self.info["grid"])

    @property
    def patients(self) -> list[str]:
        """The split key of every slice, by ``split_by`` (hashes; never a PatientID)."""
        field_name = _SPLIT_FIELDS[self.split_by]
        return [record.get(field_name) or record["patient"] for record in self.records]

    @property
    def factor_names(self) -> list[str]:
        """Names of the measured factors, the columns of ``factors`` ([] with the "window" HU map)."""
        return list(self.info.get("factors") or [])

    @property
    def factors(self) -> np.ndarray:
        """The measured factors of every slice: float32 (N, F), NaN where not measured (``measure_cache``)."""
        names = self.factor_names
        if not names:
            return np.zeros((len(self.records), 0), dtype=np.float32)
        return np.fromfile(self.path / "factors.f32", dtype=np.float32).reshape(len(self.records), len(names))

    @property
    def brain_fractions(self) -> np.ndarray:
        return np.array([record["brain_fraction"] for record in self.records], dtype=np.float32)


def open_cache(path: str | os.PathLike, split_by: str = "auto") -> SliceCache:
    """Open a complete cache folder; InputError when it is missing or incomplete. ``split_by`` (one of
    SPLIT_BY) sets how its slices group into patients."""
    path = Path(path)
    try:
        info = json.loads((path / "info.json").read_text())
        records = [json.loads(line) for line in (path / "manifest.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a complete slice cache ({exc.__class__.__name__})") from None
    size, count = info["grid"]["image_size"], info["slices"]
    if len(records) != count:
        raise InputError(path, f"manifest has {len(records)} records, info.json says {count}")
    images = np.memmap(path / "images.f16", dtype=np.float16, mode="r", shape=(count, size, size))
    return SliceCache(path=path, images=images, records=records, info=info, split_by=_check_split_by(split_by))


def _read_one(job: tuple[str, dict[str, str], Grid]) -> tuple[str, list[dict[str, Any]], list[bytes], str | None]:
    """Pool worker: one selected file (every frame / axial slice) -> (path, records, float16 image bytes, error
    or None). ``keys``: its patient keys (patient, patient_id_key) and study, from the selection."""
    from ctgen.errors import CtgenError
    from ctgen.images.preprocess import to_model
    from ctgen.io.sources import read_slices

    path, keys, grid = job
    try:
        slices = read_slices(path)  # the runtime's reader: every frame of a DICOM file, every axial slice of a volume
        records, images = [], []
        for frame, item in enumerate(slices):
            unit = to_model(item.hu, item.spacing_mm, grid)  # float32 (S, S) in [0, 1]
            records.append(
                {
                    "file": path,
                    "frame": frame,
                    **keys,
                    "position_mm": list(item.position_mm) if item.position_mm is not None else None,
                    "orientation": list(item.orientation) if item.orientation else None,
                    "instance_number": item.instance_number,
                    "slice_thickness_mm": item.slice_thickness_mm,
                    "brain_fraction": round(brain_fraction(item.hu, item.spacing_mm), 6),
                }
            )
            images.append(unit.astype(np.float16).tobytes())
        return path, records, images, None
    except CtgenError as exc:
        return path, [], [], str(exc)
    except Exception as exc:  # a broken file must not kill a 10k-file build; it is reported in info.json
        return path, [], [], f"{path}: {exc.__class__.__name__}: {exc}"


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is cheap and the workers never touch torch; elsewhere spawn is the only safe choice
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def single_threaded_blas() -> Any:
    """Limit BLAS to one thread (threadpoolctl when installed): to_model's small matrix products run
    several times slower with threads competing for cores that the other workers already use."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def build_cache(
    sources: Sequence[str | os.PathLike],
    cache_root: str | os.PathLike,
    grid: Grid,
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    split_by: str = "auto",
) -> SliceCache:
    """Open the cache for these inputs and grid, building it first when it is missing or stale.

    Only the files that ``ctgen.io.scan`` finds usable are read: no localizers, reformats, duplicates, secondary
    captures or other skipped files (the selection lands in info.json and inventory.jsonl).
    ``progress(done, total)`` is called after each file while selecting and again while building. ``split_by``
    (one of SPLIT_BY) sets how ``SliceCache.patients`` groups slices; the cache
    holds the keys of every mode. Raises InputError when the sources hold no usable slice, OutputError when
    the cache root cannot be written.
    """
    from ctgen.io.scan import scan, split_keys

    files = list_inputs(sources)
    key = cache_key(files, grid)
    final = Path(cache_root) / key[:16]
    if (final / "info.json").is_file():
        cache = open_cache(final, split_by)
        if cache.info.get("key") == key:
            return cache
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise OutputError(cache_root, f"cannot create the cache ({exc.strerror or exc})") from None

    inventory = scan(sources, files=files, progress=progress)
    strict, strict_warnings = split_keys(inventory.entries, "patient")
    jobs = [(entry.path, {"patient": entry.patient, "patient_id_key": strict[index], "study": entry.study,
                          "series": entry.series}, grid)
            for index, entry in enumerate(inventory.entries) if entry.used]
    skipped: list[str] = []
    count = 0
    with open(staging / "images.f16", "wb") as image_file, open(staging / "manifest.jsonl", "w") as manifest:

        def consume(results: Iterable[tuple[str, list, list, str | None]]) -> None:
            nonlocal count
            for done, (_path, records, images, error) in enumerate(results, 1):
                if error is not None:
                    skipped.append(error)
                for record, image in zip(records, images):
                    record = {"index": count, **record}
                    manifest.write(json.dumps(record) + "\n")
                    image_file.write(image)
                    count += 1
                if progress is not None:
                    progress(done, len(jobs))

        if workers > 1 and len(jobs) > 1:
            with _pool_context().Pool(min(workers, len(jobs)), initializer=single_threaded_blas) as pool:
                consume(pool.imap(_read_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))))
        else:
            with single_threaded_blas():
                consume(map(_read_one, jobs))

    not_used = [f"{entry.path}: {entry.reason}" + (f" ({entry.detail})" if entry.detail else "")
                for entry in inventory.skipped]
    if count == 0:
        shutil.rmtree(staging, ignore_errors=True)
        first = (skipped + not_used)[:1]
        counts = ", ".join(f"{n} {reason}" for reason, n in inventory.counts().items())
        raise InputError(", ".join(map(str, sources)),
                         f"no usable CT slices in {len(files)} files ({counts}){f'; first: {first[0]}' if first else ''}")
    records = [json.loads(line) for line in (staging / "manifest.jsonl").read_text().splitlines()]
    factor_names = measure_cache(staging, records, grid, workers=workers)
    with open(staging / "inventory.jsonl", "w") as rows:
        rows.writelines(json.dumps(entry.row()) + "\n" for entry in inventory.entries)
    selection = {k: v for k, v in inventory.summary().items() if k not in ("skipped", "split_by", "warnings")}
    selection["warnings"] = {"auto": list(inventory.warnings), "patient": strict_warnings,  # scan split by "auto"
                             "study": split_keys(inventory.entries, "study")[1]}
    info = {
        "key": key,
        "cache_version": CACHE_VERSION,
        "grid": grid.to_card(),
        "sources": [str(Path(s).resolve()) for s in sources],
        "files": len(files),
        "slices": count,
        "patients": len({r["patient"] for r in records}),
        "skipped_files": len(inventory.skipped) + len(skipped),
        "skipped_examples": (skipped + not_used)[:10],
        "failed_files": skipped,  # selected, yet unreadable
        "selection": selection,
        "brain_rule": {"brain_hu": list(BRAIN_HU), "head_hu_min": BODY_THRESHOLD_HU, "bone_hu_min": BONE_HU_MIN},
        "factors": factor_names,
        "factors_measured_on": FACTORS_MEASURED_ON if factor_names else None,
    }
    (staging / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    if final.exists():  # stale cache of the same key prefix
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(staging, ignore_errors=True)
    return open_cache(final, split_by)


class _GridSlice(NamedTuple):
    """A cached slice as ``ctgen.factors.measure_series`` takes it: HU at the grid's spacing, its geometry."""

    hu: np.ndarray
    spacing_mm: tuple[float, float]
    position_mm: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    series_uid: str
    slice_thickness_mm: float | None


def _measure_series(job: tuple[str, int, list[int], list[dict[str, Any]], Grid]) -> tuple[list[int], np.ndarray]:
    """Pool worker: the measured factors (float32 (n, F), FACTOR_NAMES' order) of one series' cached slices."""
    from ctgen.factors import measure_series
    from ctgen.images.preprocess import from_model

    folder, count, indices, records, grid = job
    images = np.memmap(Path(folder) / "images.f16", dtype=np.float16, mode="r", shape=(count, grid.size, grid.size))
    slices = [_GridSlice(from_model(images[index].astype(np.float32), grid), (grid.spacing_mm, grid.spacing_mm),
                         record["position_mm"], record.get("orientation"), record.get("series") or "",
                         record.get("slice_thickness_mm")) for index, record in zip(indices, records)]
    rows, _warnings = measure_series(slices)
    return indices, np.array([[row[name] for name in FACTOR_NAMES] for row in rows], dtype=np.float32)


def measure_cache(folder: Path, records: Sequence[dict[str, Any]], grid: Grid, *, workers: int = 2) -> list[str]:
    """Measure every cached slice (``folder``/images.f16, in ``records`` order) into ``folder``/factors.f32,
    float32 (N, F) with NaN where not measured; returns the F factor names ([] and no file with the "window"
    HU map, which clips away what the measurements need). Slices group into series by ``series``."""
    if grid.hu_map.is_window:
        return []
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.get("series") or f"\0{index}", []).append(index)
    jobs = [(str(folder), len(records), members, [records[i] for i in members], grid) for members in groups.values()]
    values = np.full((len(records), len(FACTOR_NAMES)), np.nan, dtype=np.float32)
    if workers > 1 and len(jobs) > 1:
        with _pool_context().Pool(min(workers, len(jobs)), initializer=single_threaded_blas) as pool:
            results = list(pool.imap(_measure_series, jobs, chunksize=max(1, min(8, len(jobs) // (4 * workers)))))
    else:
        with single_threaded_blas():
            results = list(map(_measure_series, jobs))
    for indices, rows in results:
        values[indices] = rows
    values.tofile(folder / "factors.f32")
    return list(FACTOR_NAMES)


def describe_selection(cache: SliceCache) -> list[str]:
    """What the cache was selected from, as lines for people: files and images used, files skipped by reason
    (``ctgen.io.scan`` codes), files that failed to read, and the warnings about patient keys under the cache's
    ``split_by``."""
    info = cache.info
    selection = info.get("selection") or {}
    reasons = selection.get("reasons") or {}
    patients = len(set(cache.patients))
    lines = [f"data: {info['files']} files; training on {selection.get('used_files', info['files'])} files = "
             f"{info['slices']} slices of {patients} patients (split by {cache.split_by})"]
    skipped = {reason: count for reason, count in reasons.items() if reason != "ok"}
    if skipped:
        lines.append("skipped: " + ", ".join(f"{count} {reason}" for reason, count in skipped.items()))
    if info.get("failed_files"):
        lines.append(f"failed to read: {len(info['failed_files'])} (first: {info['failed_files'][0]})")
    lines.extend(f"warning: {text}" for text in (selection.get("warnings") or {}).get(cache.split_by, []))
    return lines


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, e.g. (seed, "noise", epoch, rank): randomness derived rather than carried,
    so a resumed run draws exactly what the uninterrupted run drew."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def split_patients(patients: Iterable[str], *, val_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Seeded patient-level split: {"seed", "val_fraction", "train_patients", "val_patients"} (sorted lists).

    round(val_fraction · P) patients go to validation, at least 1 and at most P - 1 when val_fraction > 0.
    Raises InputError when validation is requested with fewer than 2 patients.
    """
    unique = sorted(set(patients))
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(None, f"validation fraction must be in [0, 1), got {val_fraction}")
    n_val = 0
    if val_fraction > 0:
        if len(unique) < 2:
            raise InputError(None, f"a validation split needs at least 2 patients, found {len(unique)}")
        n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    val = sorted(unique[i] for i in order[:n_val])
    train = sorted(unique[i] for i in order[n_val:])
    return {"seed": seed, "val_fraction": val_fraction, "train_patients": train, "val_patients": val}


def split_indices(patients: Sequence[str], split: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Slice indices (int64, ascending) of the train and validation patients of ``split``."""
    val = set(split["val_patients"])
    train = set(split["train_patients"])
    train_idx = np.array([i for i, p in enumerate(patients) if p in train], dtype=np.int64)
    val_idx = np.array([i for i, p in enumerate(patients) if p in val], dtype=np.int64)
    return train_idx, val_idx
