"""Image outputs of the commands: labelled grids, .npy stacks and one file per image (PNG, DICOM, NPY)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.errors import InputError
from ctgen.outputs import NpyStack, Run, derivation, resolve_out, save_npy

MAX_GRID_IMAGES = 1024  # a labelled grid of more tiles is unreadable (and large): use --per-file


class GridTiles:
    """Collects decoded HU images for a labelled grid PNG of at most MAX_GRID_IMAGES tiles."""

    def __init__(self, path: Path, count: int):
        if count > MAX_GRID_IMAGES:
            raise InputError("--out", f"a grid PNG holds at most {MAX_GRID_IMAGES} images, not {count}; "
                             "write .npy or use --per-file")
        self.path = Path(path)
        self.count = count
        self._batches: list[np.ndarray] = []

    def write(self, start: int, hu: np.ndarray) -> None:
        self._batches.append(hu)

    def save(self, window, *, title: str, force: bool, label: str = "#") -> None:
        """Square-ish grid, rows labelled with the index of their first image; empty cells are air."""
        import math

        from ctgen.render import grid_image, save_png

        tiles = np.concatenate(self._batches)
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = math.ceil(len(tiles) / cols)
        if rows * cols > len(tiles):
            air = np.full((rows * cols - len(tiles), *tiles.shape[1:]), -1000.0, dtype=np.float32)
            tiles = np.concatenate([tiles, air])
        labels = [f"{label}{row * cols}" for row in range(rows)]
        picture = grid_image(tiles, window, rows=rows, cols=cols, row_labels=labels, title=title,
                             scale=tile_scale(tiles.shape[-1]))
        save_png(picture, self.path, force=force)


class ImageOutputs:
    """The image outputs of ``sample`` and ``decode``: ``--out`` (grid .png, .npy stack or folder) and
    ``--per-file DIR`` (``--format``). Check ``targets``, then ``with outputs:`` write batches, then ``finish``.
    """

    def __init__(self, run: Run, model, *, out: Path | None, per_file: Path | None, file_format: str,
                 default_name: str, names: Sequence[str], window, action: str):
        self.run, self.count = run, len(names)
        self.grid: GridTiles | None = None
        self.stack: NpyStack | None = None
        self.files: PerFile | None = None
        if out is not None or per_file is None:
            target = resolve_out(out, default_name, (".png", ".npy"))
            if target.suffix.lower() == ".png":
                self.grid = GridTiles(target, self.count)
            else:
                size = model.grid.size
                self.stack = NpyStack(target, (self.count, size, size), force=run.force)
        if per_file is not None:
            self.files = PerFile(per_file, names, file_format, window=window, model=model, action=action,
                                 force=run.force)
        self.window = window

    @property
    def targets(self) -> list[Path]:
        single = [item.path for item in (self.grid, self.stack) if item is not None]
        return single + (self.files.paths if self.files else [])

    def __enter__(self) -> ImageOutputs:
        if self.stack is not None:
            self.stack.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.stack is not None:
            self.stack.__exit__(*exc_info)
        if self.files is not None and exc_info[0] is None:
            self.files.close()

    def write(self, start: int, hu: np.ndarray) -> None:
        for sink in (self.grid, self.stack, self.files):
            if sink is not None:
                sink.write(start, hu)

    def finish(self, *, title: str, what: str) -> None:
        """Save the grid (after the ``with`` block) and record every output."""
        if self.grid is not None:
            self.grid.save(self.window, title=title, force=self.run.force)
            self.run.record("grid_png", self.grid.path, count=self.count)
            self.run.note(f"wrote {self.count} {what} to {self.grid.path}")
        if self.stack is not None:
            self.run.record("npy_stack", self.stack.path, count=self.count, shape=list(self.stack.shape))
            self.run.note(f"wrote {self.count} {what} (HU, float32 {self.stack.shape}) to {self.stack.path}")
        if self.files is not None:
            kind = f"per_file_{self.files.format}"
            self.run.record(kind, self.files.folder, count=self.count, files=[str(p) for p in self.files.paths])
            self.run.note(f"wrote {self.count} .{self.files.format} files to {self.files.folder}")


def batch_size_for(model, requested: int | None) -> int:
    """Images per inference call: ``requested``, else the model's choice, capped on the CPU so that ONNX
    Runtime's memory arena stays near 200 MB (16 images of 128², 4 of 256²) whatever the image size."""
    if requested:
        return requested
    if model.provider != "CPUExecutionProvider":
        return model.batch_size
    return max(1, min(model.batch_size, (16 * 128 * 128) // (model.grid.size * model.grid.size)))


def stream_decode(run: Run, model, latents: np.ndarray, sinks: Sequence[Any], *, batch_size: int | None,
                  description: str = "decoding") -> None:
    """Decode latents (N, L) batch by batch and hand each HU batch (B, S, S) to every sink's ``write``."""
    from ctgen.preprocess import from_model

    step = batch_size_for(model, batch_size)
    with run.progress(len(latents), description) as advance:
        for start in range(0, len(latents), step):
            hu = from_model(model.decode(latents[start : start + step]), model.grid)
            for sink in sinks:
                sink.write(start, hu)
            advance(len(hu))


def tile_scale(size: int) -> int:
    """Enlargement of grid tiles so that small models still give readable pictures (tiles >= 128 px)."""
    return max(1, 128 // int(size))


class PerFile:
    """HU images written one file each into a folder, batch by batch: ``<name>.png|.dcm|.npy``.

    PNG: windowed 8-bit; NPY: float32 HU (S, S); DCM: derived, de-identified CT images written with
    ctgen.dicom.write_series, one study per run and one series per DICOM_CHUNK images (write_series
    numbers instances and sets geometry per call). Call ``close`` after the last ``write``.
    """

    DICOM_CHUNK = 256

    def __init__(self, folder: Path, names: Sequence[str], file_format: str, *, window, model, action: str,
                 force: bool):
        self.folder = Path(folder)
        self.format = file_format
        self.window = window
        self.model = model
        self.action = action
        self.force = force
        self.paths = [self.folder / f"{name}.{file_format}" for name in names]
        self._pending: list[tuple[int, np.ndarray]] = []
        self._study_uid: str | None = None
        self._series = 0

    def write(self, start: int, hu: np.ndarray) -> None:
        """Write images ``start .. start + len(hu)``: HU float32 (B, S, S)."""
        if self.format == "dcm":
            self._pending.append((start, hu))
            if sum(len(batch) for _, batch in self._pending) >= self.DICOM_CHUNK:
                self._flush_dicom()
            return
        from ctgen.render import save_png, to_uint8

        for offset, image in enumerate(hu):
            path = self.paths[start + offset]
            if self.format == "png":
                save_png(to_uint8(image, self.window), path, force=self.force)
            else:
                save_npy(image.astype(np.float32), path, force=self.force)

    def close(self) -> None:
        if self._pending:
            self._flush_dicom()

    def _flush_dicom(self) -> None:
        import shutil

        from pydicom.uid import generate_uid

        from ctgen.dicom import write_series

        indices = [start + offset for start, batch in self._pending for offset in range(len(batch))]
        hu = np.concatenate([batch for _, batch in self._pending])
        self._pending = []
        self._study_uid = self._study_uid or generate_uid()
        self._series += 1
        spacing = self.model.grid.spacing_mm
        # write_series names files by index within the call: write into a hidden folder, then rename
        staging = self.folder / f".ctgen-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            written = write_series(hu, staging, spacing_mm=(spacing, spacing), description=f"ctgen {self.action}",
                                   derivation=derivation(self.model, self.action), series_number=self._series,
                                   window=tuple(self.window), study_uid=self._study_uid,
                                   filename_pattern="{index:06d}.dcm")
            for index, source in zip(indices, written):
                os.replace(source, self.paths[index])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
