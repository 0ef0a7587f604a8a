"""Which slices a path holds, and reading them: DICOM files (single- or multi-frame) and NIfTI volumes, slice K
of a file named ``FILE#K``. The pipeline (``ctgen.api``) and the commands name slices the same way through
these functions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctgen.errors import ArgumentError, CtgenError, DicomError

__all__ = ["FolderSelection", "OneSlice", "SourceReader", "gather_files", "one_slice", "read_source",
           "read_slices", "select_folder", "selected_sources", "slice_count", "slice_sources", "split_source"]

_INDEXED = re.compile(r"^(?P<path>.+)#(?P<index>\d+)$")
ErrorHandler = Callable[[Any, CtgenError], None]


def gather_files(inputs: Iterable[str | os.PathLike], *, on_error: ErrorHandler | None = None,
                 on_selection: Callable[[FolderSelection], None] | None = None) -> list[Path]:
    """The slice files of ``inputs``, unique and sorted by path. A file is taken as named (the caller's choice,
    read as it is); a folder gives the files of ``ctgen.io.scan``'s selection under it (``select_folder``):
    the very files training and ``ctgen evaluate`` take from it. What scan leaves out of a folder is no error;
    each folder's ``FolderSelection`` goes to ``on_selection`` when given.

    A missing input raises DicomError, or is handed to ``on_error(input, error)`` when given.
    """
    from ctgen.io.dicom import iter_dicom_files

    files: set[Path] = set()
    for item in inputs:
        try:
            if not Path(item).is_dir():
                files.update(iter_dicom_files([item]))
                continue
            selection, selected = select_folder(item)
            files.update(selected)
            if on_selection is not None:
                on_selection(selection)
        except CtgenError as error:
            if on_error is None:
                raise
            on_error(item, error)
    return sorted(files, key=str)


@dataclass(frozen=True)
class FolderSelection:
    """What scan's selection took from one folder: its files ``by_reason`` (``Inventory.counts()``: reason code ->
    files, in ``ctgen.io.scan_entry.REASONS`` order); "ok" ones are used, the others ``left_out``."""

    folder: str
    by_reason: dict[str, int]

    @property
    def files(self) -> int:
        return sum(self.by_reason.values())

    @property
    def used(self) -> int:
        return self.by_reason.get("ok", 0)

    @property
    def left_out(self) -> dict[str, int]:
        return {reason: count for reason, count in self.by_reason.items() if reason != "ok"}

    @property
    def note(self) -> str:
        """One line for people: how many files were used, and the reasons of the others."""
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.left_out.items()) or "none"
        return f"ctgen: note: {self.folder}: {self.used} of {self.files} files used (scan's selection; left out: " \
               f"{reasons})"

    def summary(self) -> dict[str, Any]:
        return {"folder": self.folder, "files": self.files, "used": self.used, "left_out": self.left_out}

    @classmethod
    def of(cls, folder: str | os.PathLike, inventory: Any) -> FolderSelection:
        """The selection a ``ctgen.io.scan`` inventory of ``folder`` makes."""
        return cls(os.path.join(os.fspath(folder), ""), inventory.counts())


def select_folder(folder: str | os.PathLike) -> tuple[FolderSelection, list[Path]]:
    """The usable files under ``folder`` by ``ctgen.io.scan``'s selection (header-only), named under
    ``folder`` as given (absolute where a link leads outside it), in scan's order; and its ``FolderSelection``."""
    from ctgen.io.scan import scan

    inventory = scan([folder])
    root = Path(folder).resolve()
    selected = []
    for entry in inventory.used:
        path = Path(entry.path)
        selected.append(Path(folder) / path.relative_to(root) if path.is_relative_to(root) else path)
    return FolderSelection.of(folder, inventory), selected


def split_source(source: str | os.PathLike) -> tuple[Path, int | None]:
    """``FILE#K`` -> (FILE, K); anything else (an existing file named with a #, too) -> (path, None)."""
    text = os.fspath(source)
    match = _INDEXED.match(text)
    if match is None or Path(text).exists():
        return Path(text), None
    return Path(match["path"]), int(match["index"])


@dataclass(frozen=True)
class OneSlice:
    """The one slice a name stands for: ``path``, its ``index`` (None for a file read whole: one slice) and, when
    the file holds several slices and none was named, ``middle_of``: how many (``index`` is then their middle)."""

    path: Path
    index: int | None
    middle_of: int | None = None

    @property
    def source(self) -> str:
        """The slice's name: the file, or ``FILE#K``."""
        return str(self.path) if self.index is None else f"{self.path}#{self.index}"

    @property
    def note(self) -> str | None:
        """One line for people when the middle slice was picked, else None."""
        if self.middle_of is None:
            return None
        return f"{self.path} holds {self.middle_of} slices; using #{self.index} (the middle one)"


def one_slice(source: str | os.PathLike, slice_index: int | None = None) -> OneSlice:
    """Which slice ``source`` names: ``FILE#K`` or ``slice_index`` K, else a file's only slice, or the middle one
    (index n // 2, numbered as ``slice_sources`` numbers them) of a file holding n > 1 slices (a volume's axial
    slices, a multi-frame file's frames). Reads a header only. Raises ArgumentError ("slice_index") when
    ``slice_index`` contradicts ``FILE#K``."""
    path, index = split_source(source)
    if slice_index is not None and index is not None and slice_index != index:
        raise ArgumentError("slice_index", f"{os.fspath(source)} names slice {index}, not {slice_index}")
    if index is not None or slice_index is not None:
        return OneSlice(path, slice_index if index is None else index)
    count = slice_count(path)
    return OneSlice(path, count // 2, count) if count > 1 else OneSlice(path, None)


def slice_count(path: str | os.PathLike) -> int:
    """Slices a file holds, from its header: axial slices of a NIfTI volume, frames of a DICOM file (1 when
    the header cannot be read: reading it will say why)."""
    from ctgen.io.nifti import is_nifti, volume_header

    try:
        if is_nifti(path):
            return volume_header(path).slices
        from ctgen.io.dicom.header import read_header

        return read_header(path).frames
    except CtgenError:
        return 1


def slice_sources(files: Iterable[str | os.PathLike]) -> list[str]:
    """Every slice of ``files`` by name: the file itself when it holds one slice, else ``FILE#0``, ``FILE#1``, …
    (volumes' axial slices inferior first, multi-frame files' frames). Reads headers only."""
    sources = []
    for path in files:
        count = slice_count(path)
        sources.extend([str(path)] if count == 1 else [f"{path}#{index}" for index in range(count)])
    return sources


def selected_sources(entries: Iterable[Any]) -> list[str]:
    """Every slice of the usable files of a ``ctgen.io.scan`` inventory (its ``entries``), by name as
    ``slice_sources`` names them: the file when it holds one image, else ``FILE#0``, ``FILE#1``, … (frames of a
    multi-frame file, axial slices of a volume, as ``Entry.frames`` counts them). Reads nothing."""
    sources = []
    for entry in entries:
        if entry.reason == "ok":
            sources.extend([entry.path] if entry.frames <= 1 else [f"{entry.path}#{k}" for k in range(entry.frames)])
    return sources


def read_source(source: str | os.PathLike) -> Any:
    """The ``ctgen.io.dicom.Slice`` that a name stands for: ``FILE#K`` (frame or axial slice K), else the file's
    first slice (a single-frame DICOM file's only one). Raises DicomError."""
    path, index = split_source(source)
    return read_slices(path, [0 if index is None else index])[0]


class SourceReader:
    """``read(name)`` as ``read_source``, reading a file once for the names of its slices read one after another
    (``FILE#0``, ``FILE#1``, …, as ``slice_sources`` lists them): it keeps the last file's slices, or its error.
    A multi-frame file or a NIfTI volume read slice by slice through ``read_source`` is read and decoded once
    per slice; here once."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._slices: list[Any] | CtgenError = []

    def read(self, source: str | os.PathLike) -> Any:
        """The ``ctgen.io.dicom.Slice`` that ``source`` names. Raises DicomError."""
        path, index = split_source(source)
        if index is None:
            return read_source(path)
        if path != self._path:
            try:
                self._slices = read_slices(path)
            except CtgenError as error:
                self._slices = error
            self._path = path
        if isinstance(self._slices, CtgenError):
            raise self._slices
        if not 0 <= index < len(self._slices):
            raise DicomError(path, f"slice {index} out of range (the file holds {len(self._slices)})")
        return self._slices[index]


def read_slices(path: str | os.PathLike, indices: list[int] | None = None) -> list[Any]:
    """``ctgen.io.dicom.Slice`` objects of a file: a NIfTI volume's axial slices or a DICOM file's frames (all,
    or those of ``indices``). Raises DicomError."""
    from ctgen.io.nifti import is_nifti, read_volume

    if is_nifti(path):
        return read_volume(path, indices)
    from ctgen.io.dicom import read_frames, read_slice

    if indices is None:
        return read_frames(path)
    if len(indices) == 1:
        return [read_slice(path, frame=indices[0])]
    frames = read_frames(path)
    for index in indices:
        if not 0 <= index < len(frames):
            raise DicomError(path, f"frame {index} out of range (the file has {len(frames)})")
    return [frames[index] for index in indices]
