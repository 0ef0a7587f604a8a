"""Training data: DICOM folders -> a preprocessed slice cache on disk, and the patient-level split.

The cache is built once with the runtime's own code (``ctgen.dicom`` reads, ``ctgen.preprocess.to_model``
resamples and windows) and reused until its inputs change. Layout of ``<cache_root>/<key[:16]>/``:

    images.f16      raw float16 (N, S, S), C order, values in [0, 1] (the model's window)
    manifest.jsonl  one JSON object per slice, in image order: index, file, frame, patient (sha256 prefix
                    of the PatientID, never the ID itself), position_mm, instance_number, brain_fraction
    info.json       key, grid card, slice/patient/file counts, skipped files; written last (complete marker)

The key hashes the sorted input files (absolute path, size, mtime), the Grid, CACHE_VERSION and the source
of ctgen.dicom and ctgen.preprocess, so editing the preprocessing code or touching an input rebuilds it.

Brain-slice rule (``brain_fraction``, used by ``--filter-brain``): the fraction of the head (HU > -500)
that is brain-range tissue (0..80 HU) enclosed by bone (HU >= 300 with its holes filled). Slices below the
skull base (open bone ring, soft tissue of face and neck) and above the vertex score near 0; mid-brain
slices score well above the default threshold BRAIN_FRACTION_MIN.
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
from typing import Any

import numpy as np

from ctgen.dicom.common import patient_key
from ctgen.errors import InputError, OutputError
from ctgen.preprocess import Grid

__all__ = [
    "CACHE_VERSION",
    "BRAIN_FRACTION_MIN",
    "SliceCache",
    "brain_fraction",
    "build_cache",
    "cache_key",
    "derived_seed",
    "list_inputs",
    "open_cache",
    "split_patients",
    "split_indices",
]

CACHE_VERSION = 1
BRAIN_HU = (0.0, 80.0)
HEAD_HU_MIN = -500.0
BONE_HU_MIN = 300.0
BRAIN_FRACTION_MIN = 0.1


def brain_fraction(hu: np.ndarray) -> float:
    """Share of the head (HU > -500) that is 0..80 HU tissue inside the skull; HU float (H, W) -> [0, 1]."""
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    head = hu > HEAD_HU_MIN
    head_pixels = int(head.sum())
    if head_pixels == 0:
        return 0.0
    bone = hu >= BONE_HU_MIN
    inside_skull = ndimage.binary_fill_holes(bone) & ~bone
    brain = inside_skull & (hu >= BRAIN_HU[0]) & (hu <= BRAIN_HU[1])
    return float(brain.sum()) / head_pixels


def _preprocess_fingerprint() -> str:
    import ctgen.dicom
    import ctgen.preprocess

    digest = hashlib.sha256()
    for module in (ctgen.dicom, ctgen.preprocess):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def list_inputs(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Every file under the source folders/files (recursive), as sorted absolute paths."""
    from ctgen.dicom import iter_dicom_files

    for source in sources:
        if not Path(source).exists():
            raise InputError(source, "no such file or folder")
    files = sorted({Path(path).resolve() for path in iter_dicom_files([Path(s) for s in sources])})
    if not files:
        raise InputError(", ".join(map(str, sources)), "no DICOM files found")
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
    """An opened cache: ``images`` float16 memmap (N, S, S) in [0, 1] and one manifest record per image."""

    path: Path
    images: np.ndarray
    records: list[dict[str, Any]]
    info: dict[str, Any]

    @property
    def grid(self) -> Grid:
        return Grid.from_card(self.info["grid"])

    @property
    def patients(self) -> list[str]:
        return [record["patient"] for record in self.records]

    @property
    def brain_fractions(self) -> np.ndarray:
        return np.array([record["brain_fraction"] for record in self.records], dtype=np.float32)


def open_cache(path: str | os.PathLike) -> SliceCache:
    """Open a complete cache folder; InputError when it is missing or incomplete."""
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
    return SliceCache(path=path, images=images, records=records, info=info)


def _read_one(job: tuple[str, Grid]) -> tuple[str, list[dict[str, Any]], list[bytes], str | None]:
    """Pool worker: one file -> (path, records, float16 image bytes, error or None)."""
    from ctgen import dicom
    from ctgen.errors import CtgenError
    from ctgen.preprocess import to_model

    path, grid = job
    try:
        slices = dicom.read_frames(path) if hasattr(dicom, "read_frames") else [dicom.read_slice(path)]
        records, images = [], []
        for frame, item in enumerate(slices):
            unit = to_model(item.hu, item.spacing_mm, grid)  # float32 (S, S) in [0, 1]
            fallback = item.series_uid or str(Path(path).parent)
            records.append(
                {
                    "file": path,
                    "frame": frame,
                    "patient": patient_key(item.patient_id, fallback),
                    "position_mm": list(item.position_mm) if item.position_mm is not None else None,
                    "instance_number": item.instance_number,
                    "brain_fraction": round(brain_fraction(item.hu), 6),
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
) -> SliceCache:
    """Open the cache for these inputs and grid, building it first when it is missing or stale.

    ``progress(done, total)`` is called after each file while building. Raises InputError when the
    sources hold no readable slice, OutputError when the cache root cannot be written.
    """
    files = list_inputs(sources)
    key = cache_key(files, grid)
    final = Path(cache_root) / key[:16]
    if (final / "info.json").is_file():
        cache = open_cache(final)
        if cache.info.get("key") == key:
            return cache
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise OutputError(cache_root, f"cannot create the cache ({exc.strerror or exc})") from None

    jobs = [(str(path), grid) for path in files]
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

    if count == 0:
        shutil.rmtree(staging, ignore_errors=True)
        first = f" (first: {skipped[0]})" if skipped else ""
        raise InputError(", ".join(map(str, sources)), f"no readable CT slices in {len(files)} files{first}")
    records = [json.loads(line) for line in (staging / "manifest.jsonl").read_text().splitlines()]
    info = {
        "key": key,
        "cache_version": CACHE_VERSION,
        "grid": grid.to_card(),
        "sources": [str(Path(s).resolve()) for s in sources],
        "files": len(files),
        "slices": count,
        "patients": len({r["patient"] for r in records}),
        "skipped_files": len(skipped),
        "skipped_examples": skipped[:10],
        "brain_rule": {"brain_hu": list(BRAIN_HU), "head_hu_min": HEAD_HU_MIN, "bone_hu_min": BONE_HU_MIN},
    }
    (staging / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    if final.exists():  # stale cache of the same key prefix
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(staging, ignore_errors=True)
    return open_cache(final)


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
