"""Slices on the model grid for the commands (imported inside command bodies: numpy is fine here)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ctgen.errors import CtgenError, DicomError
from ctgen.preprocess import Grid, from_model, to_model

DISPLAY_WINDOW_HU = (-1024.0, 3072.0)  # the whole CT range: originals on the model grid, for pictures and masks


@dataclass(frozen=True)
class GridSlice:
    """One input slice on the model grid."""

    path: Path
    image: np.ndarray  # model input, float32 (S, S) in [0, 1]
    hu: np.ndarray  # the same geometry in full-range HU, float32 (S, S): what the original looks like


def load_on_grid(path: Path, grid: Grid, *, with_hu: bool = True) -> GridSlice:
    """Read a CT slice and bring it to the model grid. Raises DicomError / InputError."""
    from ctgen.dicom import read_slice

    ct = read_slice(path)
    return _to_grid(ct, path, grid, with_hu)


def _to_grid(ct, path: Path, grid: Grid, with_hu: bool) -> GridSlice:
    image = to_model(ct.hu, ct.spacing_mm, grid)
    hu = np.empty(0, np.float32)
    if with_hu:
        wide = Grid(size=grid.size, spacing_mm=grid.spacing_mm, window_hu=DISPLAY_WINDOW_HU)
        hu = from_model(to_model(ct.hu, ct.spacing_mm, wide), wide)
    return GridSlice(Path(path), image, hu)


def encode_one(model, item: GridSlice) -> np.ndarray:
    """The posterior mean of one slice: float32 (L,)."""
    mu, _ = model.encode(item.image[None, None])
    return mu[0]


def kl_per_unit(model) -> list[float] | None:
    """Per-unit KL (nats) from the card's validation metrics, or None when the card has none."""
    values = (model.card.get("metrics") or {}).get("kl_per_unit")
    if not values or len(values) != model.latent_size:
        return None
    return [float(value) for value in values]


def frames_loop(frames: np.ndarray) -> list[np.ndarray]:
    """Frames forward then back (without repeating the ends), for a GIF that loops smoothly."""
    return list(frames) + list(frames[-2:0:-1])


def _load_or_error(path: Path, grid: Grid, with_hu: bool) -> GridSlice | CtgenError:
    try:
        return load_on_grid(path, grid, with_hu=with_hu)
    except CtgenError as error:
        return error
    except Exception as error:  # noqa: BLE001 - an unexpected failure on one file must not hide which file
        return DicomError(path, f"cannot read: {type(error).__name__}: {error}")


def iter_on_grid(paths: Sequence[Path], grid: Grid, *, with_hu: bool = False, lookahead: int = 64,
                 workers: int = 1) -> Iterator[tuple[Path, GridSlice | CtgenError]]:
    """(path, slice on the grid or the error that stopped it), in the order of ``paths``.

    Reading and preprocessing run ``lookahead`` files ahead on background threads, so that they overlap
    with inference on the caller's thread (ONNX Runtime releases the GIL).
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ctgen-read") as pool:
        pending: deque[tuple[Path, Future]] = deque()
        upcoming = iter(paths)

        def submit(count: int) -> None:
            for path in islice(upcoming, count):
                pending.append((path, pool.submit(_load_or_error, path, grid, with_hu)))

        submit(lookahead)
        try:
            while pending:
                path, future = pending.popleft()
                submit(1)
                yield path, future.result()
        finally:
            for _, future in pending:
                future.cancel()
