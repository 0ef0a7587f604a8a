"""Slices onto the model grid: the reading half of the pipeline (``ctgen.api.Generator`` inherits it).

``GridReader.load`` takes one path, ``ctgen.io.dicom.Slice`` or HU array to a ``GridSlice``; ``iter_load`` streams
files of any size on background threads. Both report slices unlike the training data (``on_warnings``, else
``SliceWarning``). The host class provides ``model``, ``grid``, ``image_size``, ``on_warnings`` and ``on_notes``.
"""

from __future__ import annotations

import os
import warnings as _warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.errors import ArgumentError, CtgenError, DicomError, InputError
from ctgen.images.preprocess import Grid, to_grid_hu
from ctgen.io.sources import gather_files, one_slice, read_slices, split_source

__all__ = ["DISPLAY_WINDOW_HU", "ErrorHandler", "GridReader", "GridSlice", "SliceWarning", "WarningHandler",
           "handle_error"]

DISPLAY_WINDOW_HU = (-1024.0, 3072.0)  # the whole CT range: originals on the model grid, for pictures and masks
ErrorHandler = Callable[[Any, CtgenError], None]
WarningHandler = Callable[[str, "tuple[str, ...]"], None]


class SliceWarning(UserWarning):
    """A slice unlike the model's training data (field of view, spacing, no brain, not axial): the pipeline
    carries on. Issued when a ``Generator`` has no ``on_warnings`` handler (the commands print them)."""


@dataclass(frozen=True)
class GridSlice:
    """One input slice on the model grid: ``image`` float32 (S, S) in model units (the encoder's input) and,
    when asked for, ``hu`` float32 (S, S): the same geometry over the whole CT range, for pictures and masks.
    ``source`` names it: the file, or ``FILE#K`` for slice K of a volume or frame K of a multi-frame file."""

    source: str
    image: np.ndarray
    hu: np.ndarray | None = None
    warnings: tuple[str, ...] = ()  # what makes the slice unlike the training data (ctgen.images.geometry.slice_warnings)
    note: str | None = None  # why this slice: "FILE holds n slices; using #K (the middle one)" when none was named


class GridReader:
    """Reads slices onto ``self.grid`` (a ``ctgen.images.preprocess.Grid``); a base of ``ctgen.api.Generator``."""

    model: Any  # ctgen.runtime.model.Model
    grid: Grid
    image_size: int
    on_warnings: WarningHandler | None
    on_notes: Callable[[str, str], None] | None

    def load(self, item: Any, *, spacing_mm: tuple[float, float] | float | None = None, with_hu: bool = False,
             slice_index: int | None = None, source: str | None = None) -> GridSlice:
        """One slice onto the model grid: a path (DICOM file, NIfTI volume, ``FILE#K``), a ``ctgen.io.dicom.Slice``
        or an HU array (H, W).

        Of a file holding several slices (a volume's axial slices, a multi-frame file's frames), slice
        ``slice_index`` K or the one named ``FILE#K``; without either, the middle one (index n // 2, as
        ``slice_sources`` numbers them), said in ``GridSlice.note`` and to ``on_notes``. Arrays use
        ``spacing_mm`` ((row, column) or one number, in mm); without it they must already be on the model grid
        (S, S). Resampled, centred and mapped by
        ``ctgen.images.preprocess.to_model``. ``with_hu`` also fills ``hu``; ``source`` renames the slice in
        ``GridSlice.source`` and warnings. A slice unlike the training data is reported (``on_warnings``) and
        loaded all the same. Raises DicomError (unreadable file) or InputError (bad array, spacing or index).
        """
        loaded = self._load(item, spacing_mm=spacing_mm, with_hu=with_hu, slice_index=slice_index, source=source)
        self._report(loaded)
        return loaded

    def load_all(self, items: Sequence[Any], *, with_hu: bool = False, slice_index: int | None = None) -> list[GridSlice]:
        """``load`` for a few items at once, warnings reported only once all of them loaded (so a bad last item
        fails alone)."""
        loaded = [self._load(item, with_hu=with_hu, slice_index=slice_index) for item in items]
        for one in loaded:
            self._report(one)
        return loaded

    def _load(self, item: Any, *, spacing_mm=None, with_hu: bool = False, slice_index: int | None = None,
              source: str | None = None) -> GridSlice:
        name = "array"
        note = None
        if isinstance(item, (str, os.PathLike)):
            chosen = one_slice(item, slice_index)
            name, note = chosen.source, chosen.note
            item = read_slices(chosen.path, None if chosen.index is None else [chosen.index])[0]
        if hasattr(item, "hu") and hasattr(item, "spacing_mm"):
            name = name if name != "array" else (item.path or name)
            loaded = self._on_grid(item.hu, item.spacing_mm, source or name, with_hu, getattr(item, "orientation", None))
            return loaded if note is None else replace(loaded, note=note)
        hu = np.asarray(item, dtype=np.float32)
        if hu.ndim != 2:
            raise InputError(None, f"expected an HU slice (H, W), got shape {hu.shape}")
        if spacing_mm is None and hu.shape != (self.image_size, self.image_size):
            raise ArgumentError("spacing_mm", f"an HU array of shape {hu.shape} needs a pixel spacing (only "
                                              f"({self.image_size}, {self.image_size}) is taken as the model grid)")
        spacing = self.grid.spacing_mm if spacing_mm is None else spacing_mm
        spacing = (float(spacing), float(spacing)) if np.ndim(spacing) == 0 else spacing  # type: ignore[arg-type]
        return self._on_grid(hu, spacing, source or name, with_hu, None)

    def _on_grid(self, hu: np.ndarray, spacing, name: str, with_hu: bool, orientation) -> GridSlice:
        from ctgen.images.geometry import slice_warnings

        resampled = to_grid_hu(hu, spacing, self.grid)  # once, for the model image and the HU on the grid
        image = self.grid.hu_map.to_unit(resampled)
        wide = np.clip(resampled, *DISPLAY_WINDOW_HU) if with_hu else None
        found = slice_warnings(hu, None if spacing is None else tuple(float(v) for v in spacing), self.grid.size,
                               self.grid.spacing_mm, orientation)
        return GridSlice(name, image, wide, tuple(found))

    def _report(self, loaded: GridSlice) -> None:
        if loaded.note is not None and self.on_notes is not None:
            self.on_notes(loaded.source, loaded.note)
        if not loaded.warnings:
            return
        if self.on_warnings is not None:
            self.on_warnings(loaded.source, loaded.warnings)
        else:
            _warnings.warn(f"{loaded.source}: {'; '.join(loaded.warnings)}", SliceWarning, stacklevel=3)

    def iter_load(self, paths: Sequence[str | os.PathLike], *, with_hu: bool = False, lookahead: int = 64,
                  workers: int | None = None) -> Iterator[tuple[str, GridSlice | CtgenError]]:
        """(source, slice on the grid or the error that stopped it), in the order of ``paths``.

        A path holding several slices (a NIfTI volume, a multi-frame DICOM file) gives every one of them, as
        ``FILE#0``, ``FILE#1``, …; ``FILE#K`` gives one (consecutive ones of a file are read together); a folder
        gives the files of scan's selection under it (``ctgen.io.sources.gather_files``), sorted. An
        unreadable file gives one error under its path. Slices unlike the training data are reported
        (``on_warnings``) as they are yielded. Reading and preprocessing run ``lookahead`` files ahead on
        background threads (one on the CPU, where ONNX Runtime needs the cores; four on CUDA), overlapping with
        inference on the caller's thread.
        """
        from concurrent.futures import Future, ThreadPoolExecutor  # only batch reads need threads (start-up)

        on_cpu = self.model.provider == "CPUExecutionProvider"
        if workers is None:
            workers = 1 if on_cpu else 4
        if on_cpu:
            self.model.spare_cores(workers)  # ONNX Runtime's threads and the readers each get cores of their own
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ctgen-read") as pool:
            pending: deque[Future] = deque()
            upcoming = iter(_jobs(paths))

            def submit(count: int) -> None:
                for name, path, indices in islice(upcoming, count):
                    pending.append(pool.submit(self._load_or_error, name, path, indices, with_hu))

            submit(lookahead)
            try:
                while pending:
                    future = pending.popleft()
                    submit(1)
                    for name, loaded in future.result():
                        if isinstance(loaded, GridSlice):
                            self._report(loaded)
                        yield name, loaded
            finally:
                for future in pending:
                    future.cancel()

    def _load_or_error(self, name: str, path: Path, indices: list[int] | None,
                       with_hu: bool) -> list[tuple[str, GridSlice | CtgenError]]:
        try:
            slices = read_slices(path, indices)
        except CtgenError as error:
            return [(name, error)]
        except Exception as error:  # noqa: BLE001 - an unexpected failure on one file must not hide which file
            return [(name, DicomError(path, f"cannot read: {type(error).__name__}: {error}"))]
        numbered = indices is not None or len(slices) > 1
        out: list[tuple[str, GridSlice | CtgenError]] = []
        for position, one in enumerate(slices):
            index = indices[position] if indices is not None else position
            source = f"{path}#{index}" if numbered else name
            try:
                out.append((source, self._on_grid(one.hu, one.spacing_mm, source, with_hu, one.orientation)))
            except CtgenError as error:
                out.append((source, error))
            except Exception as error:  # noqa: BLE001
                out.append((source, DicomError(source, f"cannot read: {type(error).__name__}: {error}")))
        return out


def _jobs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, Path, list[int] | None]]:
    """(name, file, slice indices or None for all) per file to read; consecutive FILE#K of one file together."""
    jobs: list[tuple[str, Path, list[int] | None]] = []
    for item in paths:
        if os.path.isdir(item):  # a folder: the files of scan's selection, as gather_files takes them
            jobs.extend((str(file), file, None) for file in gather_files([item]))
            continue
        path, index = split_source(item)
        if index is not None and jobs and jobs[-1][1] == path and jobs[-1][2] is not None:
            jobs[-1][2].append(index)
        else:
            jobs.append((str(item), path, None if index is None else [index]))
    return jobs


def handle_error(on_error: ErrorHandler | None, path: Any, error: CtgenError) -> None:
    if on_error is None:
        raise error
    on_error(path, error)
