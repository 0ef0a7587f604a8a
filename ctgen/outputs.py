"""What the commands share: stderr reporting and progress, output targets, atomic writes.

Every command checks *all* its targets (``check_targets``) before it writes the first byte, and writes
each file atomically (temporary sibling + rename), so a failed run leaves no half-written output.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.atomic import atomic_file
from ctgen.errors import InputError, OutputError

__all__ = [
    "Run",
    "atomic_file",
    "check_targets",
    "derivation",
    "NpyStack",
    "resolve_out",
    "save_npy",
    "unique_names",
]


class Run:
    """One command's session: stderr console, progress bars, warnings as one line, the --json summary."""

    def __init__(self, command: str, *, quiet: bool = False, json_summary: bool = False, force: bool = False):
        from rich.console import Console

        self.command = command
        self.quiet = quiet
        self.json_summary = json_summary
        self.force = force
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.summary: dict[str, Any] = {"command": command, "outputs": []}
        self._warnings: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> Run:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("default")
        warnings.showwarning = self._show_warning
        return self

    def __exit__(self, *exc_info: Any) -> None:
        assert self._warnings is not None
        self._warnings.__exit__(*exc_info)

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warn(str(message))

    def note(self, text: str) -> None:
        """A line for people (not for scripts): on stderr unless --quiet."""
        if not self.quiet:
            self.console.print(text, markup=False)

    def warn(self, text: str) -> None:
        if not self.quiet:
            print(f"ctgen: warning: {text}", file=sys.stderr, flush=True)

    def table(self, renderable: Any) -> None:
        if not self.quiet:
            self.console.print(renderable)

    @contextlib.contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        """A Rich progress bar on stderr, shown only on an interactive terminal and without --quiet.

        Yields ``advance(count)``.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        enabled = not self.quiet and self.console.is_interactive
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not enabled,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda count=1: bar.advance(task, count)

    def load_model(self, name_or_path: str | None, device: str):
        """Load the model (ctgen.model.load_model) and put it, with the provider really used, in the summary."""
        from ctgen.model import load_model

        model = load_model(name_or_path, device=device)
        self.summary["model"] = {
            "name": model.card.get("name"),
            "path": str(model.path),
            "provider": model.provider,
            "latent_size": model.latent_size,
            "image_size": model.grid.size,
        }
        return model

    def record(self, kind: str, path: Path | str, **extra: Any) -> None:
        self.summary["outputs"].append({"kind": kind, "path": str(path), **extra})

    def finish(self, **extra: Any) -> None:
        """Print the --json summary (one JSON object on stdout)."""
        self.summary.update(extra)
        if self.json_summary:
            print(json.dumps(self.summary), flush=True)


def resolve_out(out: Path | None, default_name: str, suffixes: Sequence[str], *, option: str = "--out") -> Path:
    """The output file for ``--out``: ``default_name`` in the working folder when omitted, inside ``out``
    when it is a folder (existing, or written with a trailing slash); else ``out`` itself, whose suffix
    must be one of ``suffixes``. Raises InputError otherwise."""
    if out is None:
        return Path(default_name)
    if out.is_dir() or str(out).endswith(("/", os.sep)):
        return out / default_name
    if out.suffix.lower() not in suffixes:
        wanted = " or ".join(suffixes)
        raise InputError(option, f"{out}: unsupported file type {out.suffix or '(none)'}; use {wanted} or a folder")
    return out


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


def save_npy(array: np.ndarray, path: Path, *, force: bool) -> Path:
    """Write one array as .npy, atomically."""
    with atomic_file(path, force=force) as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


class NpyStack:
    """A float32 (N, H, W) .npy written batch by batch through a memory map, then renamed into place:
    memory stays flat however large N is. Use as a context manager; ``write(start, batch)``."""

    def __init__(self, path: Path, shape: tuple[int, ...], *, force: bool):
        self.path = Path(path)
        self.shape = shape
        self.force = force

    def __enter__(self) -> NpyStack:
        self._context = atomic_file(self.path, force=self.force)
        handle = self._context.__enter__()
        self._array = np.lib.format.open_memmap(handle.name, mode="w+", dtype=np.float32, shape=self.shape)
        return self

    def write(self, start: int, batch: np.ndarray) -> None:
        self._array[start : start + len(batch)] = batch

    def __exit__(self, *exc_info: Any) -> None:
        self._array.flush()
        del self._array
        self._context.__exit__(*exc_info)


def derivation(model, action: str) -> str:
    """Provenance text for DICOM outputs (write_series adds the ctgen version): what was done, the model
    and its encoder checksum."""
    files = model.card.get("files") or {}
    sha = (files.get("encoder.onnx") or {}).get("sha256", "unknown")
    return f"{action}; model {model.card.get('name')} (encoder.onnx sha256 {sha})"


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Short output names for input files: their stems, or paths joined with "_" where stems collide."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names = ["_".join(p.relative_to(root).with_suffix("").parts) for p in absolute]
    if len(set(names)) == len(names):
        return names
    return [f"{index:05d}_{stem}" for index, stem in enumerate(stems)]
