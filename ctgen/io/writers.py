"""Image outputs: labelled grid PNGs, .npy stacks and one file per image (PNG, DICOM, NPY), all atomic.

Every file goes through ``ctgen.io.atomic`` (temporary sibling, fsync, exclusive commit unless ``force``), and a
``PerFile`` run takes back every file it committed when it fails or is interrupted, so no run leaves half an
output behind or overwrites what another run wrote meanwhile. DICOM outputs are reproducible: their UIDs
derive from the model's checksum, the action (which names the seed) and the image's index, and their dates
from ``SOURCE_DATE_EPOCH`` (or 1970-01-01): the same command gives byte-identical files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.io.atomic import Claims, atomic_file, remove_dead_temporaries
from ctgen.errors import ArgumentError, InputError, OutputError
from ctgen.io.sources import split_source

__all__ = ["MAX_GRID_IMAGES", "GridTiles", "ImageOutputs", "NpyStack", "PerFile", "check_targets", "derivation",
           "derived_series", "is_folder", "output_timestamp", "resolve_out", "save_npy", "unique_names"]

MAX_GRID_IMAGES = 1024  # a labelled grid of more tiles is unreadable (and large): use --per-file


def derivation(card, action: str) -> str:
    """Provenance text for DICOM outputs (the writer adds the ctgen version): what was done, the model and
    its encoder checksum."""
    return f"{action}; model {card.name} (encoder sha256 {card.encoder_sha256})"


def output_timestamp() -> datetime:
    """The date and time written into DICOM outputs: ``SOURCE_DATE_EPOCH`` when set, else 1970-01-01 00:00."""
    try:
        seconds = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    except ValueError:
        seconds = 0
    return datetime.fromtimestamp(max(0, seconds), tz=timezone.utc).replace(tzinfo=None)


def derived_series(shape: tuple[int, int, int], where, *, card, spacing_mm: float, action: str, window,
                   series: int = 0, key: Sequence[str] = (), description: str | None = None,
                   comments: str | None = None):
    """The ``ctgen.io.dicom.SeriesWriter`` of one series of images that ``action`` derived from ``card``'s model:
    the one place where outputs get their UIDs and provenance. The study UID derives from the model's encoder
    checksum, ``action`` and ``key``; the series UID from those and ``series`` (SeriesNumber ``series + 1``);
    the provenance is ``derivation(card, action)`` and the dates ``output_timestamp()``, so the same call gives
    byte-identical files. ``shape``: (N, H, W) of the series; ``spacing_mm``: the square pixel size."""
    from pydicom.uid import generate_uid

    from ctgen.io.dicom import SeriesWriter

    entropy = ["ctgen", card.encoder_sha256, action, *key]
    return SeriesWriter(shape, where, spacing_mm=(spacing_mm, spacing_mm),
                        description=description or f"ctgen {action}"[:64], derivation=derivation(card, action),
                        series_number=series + 1, window=tuple(window),
                        study_uid=generate_uid(entropy_srcs=[*entropy, "study"]),
                        series_uid=generate_uid(entropy_srcs=[*entropy, "series", str(series)]),
                        timestamp=output_timestamp(), extra_comments=comments)


def unique_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short output names for input files: their stems, or paths joined with "_" where stems collide. Slice K of
    a volume or multi-frame file (``FILE#K``) is named by the file's stem and K: ``scan_012``."""
    paths = [_slice_path(p) for p in paths]
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names = ["_".join(p.relative_to(root).with_suffix("").parts) for p in absolute]
    if len(set(names)) == len(names):
        return names
    return [f"{index:05d}_{stem}" for index, stem in enumerate(stems)]


def _slice_path(source: str | os.PathLike) -> Path:
    file, index = split_source(source)
    path = os.fspath(file)
    for suffix in (".nii.gz", ".nii"):
        if path.lower().endswith(suffix):
            path = path[: -len(suffix)] + ".nii"  # one suffix left for Path.stem to drop
    return Path(f"{Path(path).with_suffix('')}_{index:03d}" if index is not None else path)


def save_npy(array: np.ndarray, path: Path, *, force: bool) -> Path:
    """Write one array as .npy, atomically."""
    with atomic_file(path, force=force) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


class NpyStack:
    """A float32 (N, H, W) .npy written batch by batch, in order, to a temporary file that is committed at the
    end: memory stays flat however large N is, and a full disk is an error, never a half file. Use as a
    context manager; ``write(start, batch)`` with ``start`` the number of images written so far."""

    def __init__(self, path: Path, shape: tuple[int, ...], *, force: bool):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.force = force
        self._written = 0

    def __enter__(self) -> NpyStack:
        self._context = atomic_file(self.path, force=self.force)
        self._handle = self._context.__enter__()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._handle, header)
        return self

    def write(self, start: int, batch: np.ndarray) -> None:
        if start != self._written or start + len(batch) > self.shape[0]:
            raise InputError(self.path, f"images {start}.. arrive out of order (expected {self._written})")
        self._handle.write(np.ascontiguousarray(batch, dtype="<f4").tobytes())
        self._written += len(batch)

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None and self._written != self.shape[0]:
            error = InputError(self.path, f"{self._written} of {self.shape[0]} images written")
            self._context.__exit__(InputError, error, None)  # removes the temporary file
            raise error
        self._context.__exit__(kind, value, traceback)


class GridTiles:
    """Collects decoded HU images for a labelled grid PNG of at most MAX_GRID_IMAGES tiles."""

    def __init__(self, path: Path, count: int):
        if count > MAX_GRID_IMAGES:
            raise ArgumentError("out", f"a grid PNG holds at most {MAX_GRID_IMAGES} images, not {count}; "
                                       "write .npy or use --per-file")
        self.path = Path(path)
        self.count = count
        self._batches: list[np.ndarray] = []

    def write(self, start: int, hu: np.ndarray) -> None:
        self._batches.append(hu)

    def save(self, window, *, title: str, force: bool, labels: Sequence[str] | None = None) -> None:
        """Square-ish grid of PICTURE_PX tiles, each labelled (``labels``, default ``#index``); empty cells are air."""
        from ctgen.images.render import PICTURE_PX, grid_image, save_png

        tiles = np.concatenate(self._batches)
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = math.ceil(len(tiles) / cols)
        captions = list(labels) if labels is not None else [f"#{index}" for index in range(len(tiles))]
        if rows * cols > len(tiles):
            air = np.full((rows * cols - len(tiles), *tiles.shape[1:]), -1000.0, dtype=np.float32)
            tiles = np.concatenate([tiles, air])
            captions += [""] * len(air)
        picture = grid_image(tiles, window, rows=rows, cols=cols, tile_labels=captions, title=title,
                             tile_px=PICTURE_PX)
        save_png(picture, self.path, force=force)


class PerFile:
    """HU images written one file each into a folder, batch by batch: ``<name>.png|.dcm|.npy``.

    PNG: windowed 8-bit, enlarged to PICTURE_PX with its label on top (``labels``, default the names); NPY:
    float32 HU (S, S) on the model grid; DCM: derived, de-identified CT images (``ctgen.io.dicom``), one
    study per run. ``groups`` puts images into series (group g -> series g + 1, ordered by index, described
    by ``descriptions[g]``); by default every image is its own series, so unrelated images (prior samples)
    are never stacked into a fake volume. ``comments`` go into each file's ImageComments.
    Use as a context manager: on an exception every file this run committed is removed again.
    """

    def __init__(self, folder: Path, names: Sequence[str], file_format: str, *, window, card, grid, action: str,
                 force: bool, groups: Sequence[int] | None = None, descriptions: Sequence[str] | None = None,
                 comments: Sequence[str] | None = None, labels: Sequence[str] | None = None):
        self.folder = Path(folder)
        self.format = file_format
        self.labels = list(labels) if labels is not None else list(names)
        self.window = window
        self.force = force
        self.paths = [self.folder / f"{name}.{file_format}" for name in names]
        self.claims = Claims()
        self._dicom = None
        if file_format == "dcm":
            self._dicom = _DicomSeries(len(names), card, grid, action, window, groups, descriptions, comments)
        remove_dead_temporaries(self.folder)

    def __enter__(self) -> PerFile:
        self.claims.__enter__()  # records every file written inside the block (ctgen.io.atomic)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.claims.__exit__(kind, value, traceback)

    def write(self, start: int, hu: np.ndarray) -> None:
        """Write images ``start .. start + len(hu)``: HU float32 (B, S, S)."""
        from ctgen.images.render import labelled_frames, save_png

        for offset, image in enumerate(hu):
            index = start + offset
            path = self.paths[index]
            if self._dicom is not None:
                self._dicom.write(index, image, path, force=self.force)
            elif self.format == "png":
                save_png(labelled_frames([image], self.window, [self.labels[index]])[0], path, force=self.force)
            else:
                save_npy(image.astype(np.float32), path, force=self.force)


class _DicomSeries:
    """The series plan of a per-file DICOM run: deterministic UIDs, one SeriesWriter per group."""

    def __init__(self, count: int, card, grid, action: str, window, groups, descriptions, comments):
        self.groups = list(range(count)) if groups is None else [int(g) for g in groups]
        if len(self.groups) != count:
            raise InputError(None, f"{len(self.groups)} series groups for {count} images")
        self.positions = {}  # image index -> (group, index within the group)
        sizes: dict[int, int] = {}
        for index, group in enumerate(self.groups):
            self.positions[index] = (group, sizes.get(group, 0))
            sizes[group] = sizes.get(group, 0) + 1
        self.sizes, self.card, self.grid, self.action, self.window = sizes, card, grid, action, window
        self.descriptions, self.comments = descriptions, comments
        self.writers: dict[int, Any] = {}

    def write(self, index: int, hu: np.ndarray, path: Path, *, force: bool) -> None:
        group, position = self.positions[index]
        writer = self.writers.get(group)
        if writer is None:
            if len(self.writers) > 64:  # groups arrive in order: keep few writers alive
                self.writers.clear()
            writer = derived_series((self.sizes[group], *hu.shape), path, card=self.card,
                                    spacing_mm=self.grid.spacing_mm, action=self.action, window=self.window,
                                    series=group, description=self.descriptions[group] if self.descriptions else None,
                                    comments=self.comments[index] if self.comments else None)
            if self.comments is None:
                self.writers[group] = writer
        writer.write(position, hu, path, force=force)


class ImageOutputs:
    """The image outputs of ``sample`` and ``decode``: ``out`` (grid .png, .npy stack) and ``per_file`` (a
    folder, see ``PerFile``). ``labels``: a caption per image for the pictures (default: ``#index`` on the grid,
    the names on per-file PNGs). Check ``targets``, then ``with outputs:`` write batches, then ``finish``.
    """

    def __init__(self, generator, *, out: Path | None, per_file: Path | None, file_format: str, names: Sequence[str],
                 window, action: str, force: bool, labels: Sequence[str] | None = None):
        self.count, self.window, self.force, self.labels = len(names), window, force, labels
        self.grid: GridTiles | None = None
        self.stack: NpyStack | None = None
        self.files: PerFile | None = None
        if out is not None and out.suffix.lower() == ".png":
            self.grid = GridTiles(out, self.count)
        elif out is not None:
            size = generator.image_size
            self.stack = NpyStack(out, (self.count, size, size), force=force)
        if per_file is not None:
            self.files = PerFile(per_file, names, file_format, window=window, card=generator.card,
                                 grid=generator.grid, action=action, force=force, labels=labels)

    @property
    def targets(self) -> list[Path]:
        single = [item.path for item in (self.grid, self.stack) if item is not None]
        return single + (self.files.paths if self.files else [])

    def __enter__(self) -> ImageOutputs:
        if self.stack is not None:
            self.stack.__enter__()
        if self.files is not None:
            self.files.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self.stack is not None:
                self.stack.__exit__(*exc_info)
        finally:
            if self.files is not None:
                self.files.__exit__(*exc_info)

    def write(self, start: int, hu: np.ndarray) -> None:
        for sink in (self.grid, self.stack, self.files):
            if sink is not None:
                sink.write(start, hu)

    def finish(self, *, title: str) -> list[dict[str, Any]]:
        """Save the grid (after the ``with`` block); return a record of every output for the summary."""
        records = []
        if self.grid is not None:
            self.grid.save(self.window, title=title, force=self.force, labels=self.labels)
            records.append({"kind": "grid_png", "path": str(self.grid.path), "count": self.count})
        if self.stack is not None:
            records.append({"kind": "npy_stack", "path": str(self.stack.path), "count": self.count,
                            "shape": list(self.stack.shape)})
        if self.files is not None:
            records.append({"kind": f"per_file_{self.files.format}", "path": str(self.files.folder),
                            "count": self.count, "files": [str(p) for p in self.files.paths]})
        return records


def resolve_out(out: str | os.PathLike | None, default_name: str, suffixes: Sequence[str]) -> Path:
    """The output file of ``--out``: ``default_name`` in the working folder when omitted, and inside ``out`` when
    it names a folder (an existing one, a path written with a trailing slash, or one without a file suffix:
    ``--out newdir/``, ``--out newdir``); else ``out`` itself, whose suffix must be one of ``suffixes``.
    Raises ArgumentError ("out") otherwise."""
    if out is None:
        return Path(default_name)
    if is_folder(out):
        return Path(out) / default_name
    path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise ArgumentError("out", f"{os.fspath(out)}: unsupported file type {path.suffix}; use "
                                   f"{' or '.join(suffixes)}, or a folder")
    return path


def is_folder(out: str | os.PathLike) -> bool:
    """Whether ``--out`` names a folder: it exists as one, ends with a slash, or has no file suffix."""
    text = os.fspath(out)
    return text.endswith(("/", os.sep)) or Path(text).is_dir() or not Path(text).suffix


def check_targets(paths: Sequence[Path], *, force: bool) -> None:
    """Raise OutputError unless every path can be written: no duplicates, no folders in the way, and no
    existing file unless ``force``. Call it with every target of a command before writing any."""
    seen: set[Path] = set()
    listing: dict[Path, set[str] | None] = {}
    for path in paths:
        key = Path(os.path.abspath(path))
        if key in seen:
            raise OutputError(path, "would be written twice in one run")
        seen.add(key)
        parent = key.parent
        if parent not in listing:
            if parent.exists() and not parent.is_dir():
                raise OutputError(parent, "is not a folder")
            listing[parent] = set(os.listdir(parent)) if parent.is_dir() else None
            ancestor = parent
            while not ancestor.exists():
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                raise OutputError(ancestor, "is not a folder")
        names = listing[parent]
        if names is not None and key.name in names:
            if key.is_dir():
                raise OutputError(path, "is a folder")
            if not force:
                raise OutputError(path, "already exists (use --force to overwrite)")

