"""The one pipeline: a loaded model behind numpy calls in Hounsfield units.

``Generator`` is the only place that reads slices onto the model grid, batches, encodes, decodes, samples,
interpolates, traverses and edits bound factors in their units of measure; the commands of ``ctgen.cli`` and ``ctgen explore`` parse options, call it,
write and print. Every image is HU, float32 (N, S, S) on the model grid (S = ``image_size``, ``spacing_mm``
per pixel); every latent is float32 (N, L). Streaming variants (``iter_load``, ``iter_encode``,
``iter_decode``, ``iter_sample``) keep memory flat over archives of any size.
"""

from __future__ import annotations

import os
import warnings as _warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.errors import ArgumentError, CtgenError, DicomError, InputError, ModelError
from ctgen.latent import (
    DEFAULT_INTERPOLATION,
    DEFAULT_INTERPOLATION_STEPS,
    DEFAULT_TRAVERSE_STEPS,
    DEFAULT_TRAVERSE_UNITS,
    MAX_RANGE_SD,
    FactorSetting,
    TraverseRanges,
    interpolate,
    parse_ranges,
    parse_units,
    prior_batches,
    sweep,
)
from ctgen.latent import offsets as traverse_offsets
from ctgen.latent import traverse as traverse_codes
from ctgen.preprocess import Grid, from_model, to_grid_hu
from ctgen.prior import PRIORS
from ctgen.sources import gather_files, one_slice, read_slices, slice_sources, split_source

__all__ = ["DISPLAY_WINDOW_HU", "Edited", "Encoded", "Generator", "GridSlice", "Reconstruction", "SliceWarning",
           "TraverseRow", "gather_files", "load_generator", "slice_sources", "split_source"]

DISPLAY_WINDOW_HU = (-1024.0, 3072.0)  # the whole CT range: originals on the model grid, for pictures and masks
ErrorHandler = Callable[[Any, CtgenError], None]
WarningHandler = Callable[[str, "tuple[str, ...]"], None]


class SliceWarning(UserWarning):
    """A slice unlike the model's training data (field of view, spacing, no brain, not axial): the pipeline
    carries on. Issued when a ``Generator`` has no ``on_warnings`` handler (the commands print them)."""


def load_generator(name_or_path: str | os.PathLike | None = None, *, device: str = "auto") -> Generator:
    """Load a model folder (a path, a name found as ``ctgen.model.resolve_model_dir`` says: ./models/NAME, then
    the shipped models; None for "default") as a ``Generator``.

    device: "auto", "cpu" or "cuda" (see ``ctgen.load_model``). Raises ModelError / InputError.
    """
    from ctgen.model import load_model

    return Generator(load_model(name_or_path, device=device))


@dataclass(frozen=True)
class GridSlice:
    """One input slice on the model grid: ``image`` float32 (S, S) in model units (the encoder's input) and,
    when asked for, ``hu`` float32 (S, S): the same geometry over the whole CT range, for pictures and masks.
    ``source`` names it: the file, or ``FILE#K`` for slice K of a volume or frame K of a multi-frame file."""

    source: str
    image: np.ndarray
    hu: np.ndarray | None = None
    warnings: tuple[str, ...] = ()  # what makes the slice unlike the training data (ctgen.geometry.slice_warnings)
    note: str | None = None  # why this slice: "FILE holds n slices; using #K (the middle one)" when none was named


@dataclass(frozen=True)
class Encoded:
    """One batch of ``iter_encode``: the sources, their posterior means and log-variances float32 (B, L)."""

    sources: list[str]
    mu: np.ndarray
    logvar: np.ndarray
    warnings: list[tuple[str, ...]] | None = None  # per source, () when none


@dataclass(frozen=True)
class Reconstruction:
    """One slice of ``iter_reconstruct``: the input, decode(encode(input)) in HU (S, S), the target the model
    can reach (the input through the model's HU map) and the errors inside the head (None without head)."""

    slice: GridSlice
    recon_hu: np.ndarray
    target_hu: np.ndarray
    mae_hu: float | None
    rmse_hu: float | None
    head_pixels: int


@dataclass(frozen=True)
class TraverseRow:
    """One row of ``traverse_rows``: unit ``unit`` takes the latent values ``z`` float32 (K,) in turn (``offsets``:
    the same minus the start's value). For a bound unit, ``bound`` (``ctgen.card.BoundUnit``) and ``values``
    float64 (K,): the factor's value each column stands for, in its unit of measure, and ``reading``: the start's;
    ``relative`` when the columns are changes around the reading (standard deviations, or ``FACTOR=N``), not
    absolute values (``FACTOR=LO:HI``)."""

    unit: int
    z: np.ndarray
    offsets: np.ndarray
    bound: Any = None
    values: np.ndarray | None = None
    reading: float | None = None
    relative: bool = True


@dataclass(frozen=True)
class Edited:
    """What ``Generator.edit`` did to one slice: the input (``slice``, with ``hu`` on the grid), its posterior
    mean ``mu`` (L,), the edited latent ``z`` (L,), the decoded ``hu`` float32 (S, S); per bound factor the
    model's reading before (of ``mu``) and after (of ``z``), the value asked for (``requested``, only the factors
    set), and the factor measured (``ctgen.factors.measure_slice`` at the grid's spacing, NaN where it cannot be
    measured on one slice) on the input's and on the output's HU."""

    slice: GridSlice
    mu: np.ndarray
    z: np.ndarray
    hu: np.ndarray
    requested: dict[str, float]
    reading_before: dict[str, float]
    reading_after: dict[str, float]
    measured_before: dict[str, float]
    measured_after: dict[str, float]


class Generator:
    """A loaded β-VAE (``ctgen.model.Model``) behind numpy calls in HU.

    ``model``, ``card`` (a ``ctgen.card.ModelCard``), ``grid``, ``latent_size`` and ``image_size`` describe it;
    ``units_by_kl`` ranks the latent units (most informative first), ``kl_per_unit`` holds their KL in nats
    (None if unknown) and ``unit_labels`` the factor the card names for a unit. ``bound_units`` are the units
    bound to measured factors (the card's ``binding``): ``read_factors``, ``set_factors``, ``edit`` and
    ``traverse_rows`` work with them in the factors' units of measure.
    """

    def __init__(self, model: Any):
        self.model = model
        # called as on_warnings(source, warnings) for each slice unlike the training data; None: SliceWarning
        self.on_warnings: WarningHandler | None = None
        # called as on_notes(source, note) when ``load`` picks the middle slice of a file; None: not reported
        self.on_notes: Callable[[str, str], None] | None = None
        self.card = model.card
        self.grid: Grid = model.grid
        self.latent_size: int = model.latent_size
        self.image_size: int = model.grid.size

    def __repr__(self) -> str:
        return f"Generator({self.model!r})"

    @property
    def units_by_kl(self) -> list[int]:
        return self.card.units_by_kl

    @property
    def kl_per_unit(self) -> list[float] | None:
        return self.card.kl_per_unit

    @property
    def unit_labels(self) -> dict[int, str]:
        return self.card.unit_labels

    @property
    def batch_size(self) -> int:
        """Images per inference call: 16 of 128² on the CPU (fewer for larger images), more on CUDA."""
        return self.model.batch_size

    # ---- reading -----------------------------------------------------------------------------------
    def load(self, item: Any, *, spacing_mm: tuple[float, float] | float | None = None, with_hu: bool = False,
             slice_index: int | None = None, source: str | None = None) -> GridSlice:
        """One slice onto the model grid: a path (DICOM file, NIfTI volume, ``FILE#K``), a ``ctgen.dicom.Slice``
        or an HU array (H, W).

        Of a file holding several slices (a volume's axial slices, a multi-frame file's frames), slice
        ``slice_index`` K or the one named ``FILE#K``; without either, the middle one (index n // 2, as
        ``slice_sources`` numbers them), said in ``GridSlice.note`` and to ``on_notes``. Arrays use ``spacing_mm`` ((row, column) or one number, in
        mm); without it they must already be on the model grid (S, S). Resampled, centred and mapped by
        ``ctgen.preprocess.to_model``. ``with_hu`` also fills ``hu``; ``source`` renames the slice in
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
        from ctgen.geometry import slice_warnings

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
        ``FILE#0``, ``FILE#1``, …; ``FILE#K`` gives one (consecutive ones of a file are read together). An
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

    # ---- latents -----------------------------------------------------------------------------------
    @property
    def has_fitted_prior(self) -> bool:
        return self.model.prior is not None

    def latents(self, n: int = 1, *, seed: int = 0, temperature: float = 1.0, prior: str = "auto") -> np.ndarray:
        """``n`` latents from a prior: float32 (n, L); same seed, same values.

        prior: "fitted" (the mixture fitted to the training slices' codes, ``ctgen.prior``), "standard"
        (N(0, I)) or "auto" (fitted when the model has one). ``temperature`` scales the spread: N(0, T²) for
        the standard prior, each component's covariance by T² for the fitted one. Raises ArgumentError.
        """
        batches = self.iter_latents(n, seed=seed, temperature=temperature, prior=prior, batch_size=max(n, 1))
        return np.concatenate([np.zeros((0, self.latent_size), np.float32), *batches])

    def iter_latents(self, n: int, *, seed: int = 0, temperature: float = 1.0, prior: str = "auto",
                     batch_size: int | None = None) -> Iterator[np.ndarray]:
        """``latents(n, ...)`` in consecutive float32 (≤ batch_size, L) batches, each drawn when asked for: the
        same values in flat memory for any ``n``. Raises ArgumentError here, not at the first batch."""
        if prior not in PRIORS:
            raise ArgumentError("prior", f"unknown prior {prior!r} (choose {', '.join(PRIORS)})")
        fitted = self.model.prior if prior != "standard" else None
        if prior == "fitted" and fitted is None:
            raise ArgumentError("prior", f"model {self.card.name} has no fitted prior (export.prior adds one)")
        step = batch_size or self.batch_size
        if fitted is not None:
            return fitted.batches(n, seed=seed, temperature=temperature, batch_size=step)
        return prior_batches(n, self.latent_size, seed=seed, temperature=temperature, batch_size=step)

    def sample(self, n: int = 1, *, seed: int = 0, temperature: float = 1.0, prior: str = "auto") -> np.ndarray:
        """``n`` random slices from a prior (see ``latents``): HU float32 (n, S, S). Same seed, same images."""
        return self.decode(self.latents(n, seed=seed, temperature=temperature, prior=prior))

    def iter_sample(self, n: int, *, seed: int = 0, temperature: float = 1.0, prior: str = "auto",
                    batch_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``sample(n, ...)`` as (start, HU float32 (B, S, S)) batches: latents drawn batch by batch, so memory
        stays flat for any ``n``. Raises ArgumentError here, not at the first batch."""
        batches = self.iter_latents(n, seed=seed, temperature=temperature, prior=prior, batch_size=batch_size)
        return self._decoded(batches)

    def _decoded(self, batches: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
        start = 0
        for z in batches:
            yield start, self.decode(z)
            start += len(z)

    def encode(self, slices: Any, *, spacing_mm: tuple[float, float] | float | None = None) -> np.ndarray:
        """Posterior means mu, float32 (N, L), of CT slices.

        ``slices``: one item or a sequence of items, each a DICOM path, a ``ctgen.dicom.Slice``, an HU array
        (H, W) or a ``GridSlice``; an HU array (N, H, W) is N slices (see ``load`` for ``spacing_mm``).
        Raises DicomError (unreadable file) or InputError (bad array or spacing).
        """
        images = np.stack([self._image(item, spacing_mm) for item in _items(slices)])
        return self.encode_images(images)[0]

    def encode_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model-unit images float32 (N, S, S) -> (mu, logvar), each float32 (N, L)."""
        return self.model.encode(np.asarray(images, dtype=np.float32)[:, None])

    def iter_encode(self, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                    on_error: ErrorHandler | None = None) -> Iterator[Encoded]:
        """Encode files in batches, reading ahead on background threads; ``Encoded`` batches in input order
        (every slice of a volume or multi-frame file, as ``iter_load`` names them).

        An unreadable file raises its DicomError, or is handed to ``on_error(path, error)`` and skipped.
        """
        step = batch_size or self.batch_size
        sources: list[str] = []
        images: list[np.ndarray] = []
        found: list[tuple[str, ...]] = []
        for path, loaded in self.iter_load(paths, lookahead=max(64, 2 * step)):
            if isinstance(loaded, CtgenError):
                _handle(on_error, path, loaded)
                continue
            sources.append(path)
            images.append(loaded.image)
            found.append(loaded.warnings)
            if len(images) == step:
                yield Encoded(sources, *self.encode_images(np.stack(images)), found)
                sources, images, found = [], [], []
        if images:
            yield Encoded(sources, *self.encode_images(np.stack(images)), found)

    def decode(self, z: Any) -> np.ndarray:
        """Latents float (N, L), or one (L,), to slices: HU float32 (N, S, S). Raises InputError."""
        z = np.asarray(z, dtype=np.float32)
        return from_model(self.model.decode(z[None] if z.ndim == 1 else z), self.grid)

    def iter_decode(self, z: np.ndarray, *, batch_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start, HU float32 (B, S, S)) for consecutive batches of latents (N, L): flat memory for any N."""
        step = batch_size or self.batch_size
        if step < 1:
            raise ArgumentError("batch_size", f"must be >= 1, got {step}")
        for start in range(0, len(z), step):
            yield start, self.decode(z[start : start + step])

    def reconstruct(self, slices: Any, *, spacing_mm: tuple[float, float] | float | None = None) -> np.ndarray:
        """``decode(encode(slices))``: HU float32 (N, S, S)."""
        return self.decode(self.encode(slices, spacing_mm=spacing_mm))

    def iter_reconstruct(self, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                         on_error: ErrorHandler | None = None) -> Iterator[Reconstruction]:
        """Reconstruct files one ``Reconstruction`` at a time, with MAE and RMSE in HU inside the head
        (``ctgen.metrics.head_error``: original > -500 HU) against what the model can reach: the original
        through its HU map."""
        from ctgen.metrics.reconstruction import head_error, head_mask  # only reconstruct needs them (start-up)

        step = batch_size or self.batch_size
        batch: list[GridSlice] = []

        def flush() -> Iterator[Reconstruction]:
            images = np.stack([item.image for item in batch])
            recon = self.decode(self.encode_images(images)[0])
            target = from_model(images, self.grid)
            for item, recon_hu, target_hu in zip(batch, recon, target):
                error = head_error(target_hu, recon_hu, head_mask(item.hu))
                yield Reconstruction(item, recon_hu, target_hu, error.mae_hu, error.rmse_hu, error.pixels)
            batch.clear()

        for path, loaded in self.iter_load(paths, with_hu=True, lookahead=max(64, 2 * step)):
            if isinstance(loaded, CtgenError):
                _handle(on_error, path, loaded)
                continue
            batch.append(loaded)
            if len(batch) == step:
                yield from flush()
        if batch:
            yield from flush()

    # ---- exploring ---------------------------------------------------------------------------------
    def units(self, spec: str | Sequence[int] = DEFAULT_TRAVERSE_UNITS) -> list[int]:
        """Unit indices from a spec ("0-4,7", "top5", "all", factor names: a bound unit's factor first, then the
        factors the card names, "rotation_deg,level"; names and numbers may mix) or a list, checked against the
        latent size. Raises ArgumentError."""
        if isinstance(spec, str):
            parts = [part.strip() for part in spec.split(",") if part.strip()]
            named = [part[0].isalpha() and part.lower() != "all" and not part.lower().startswith("top")
                     for part in parts]
            if not any(named):
                return parse_units(spec, self.latent_size, self.units_by_kl)
            chosen: list[int] = []
            for part, is_name in zip(parts, named):  # factor names and unit numbers may mix: "rotation_deg,3"
                found = [self._unit_for(part)] if is_name else parse_units(part, self.latent_size, self.units_by_kl)
                chosen += [unit for unit in found if unit not in chosen]
            return chosen
        chosen = [int(unit) for unit in spec]
        if any(not 0 <= unit < self.latent_size for unit in chosen):
            raise ArgumentError("units", f"units must lie in 0-{self.latent_size - 1}, got {chosen}")
        return chosen

    def _unit_for(self, factor: str) -> int:
        bound = self.card.bound_unit(factor)
        unit = bound.unit if bound is not None else self.card.unit_for_factor(factor)
        if unit is None:
            known = ", ".join(dict.fromkeys([b.factor for b in self.bound_units]
                                            + sorted(set(self.unit_labels.values()))))
            raise ArgumentError("units", f"cannot parse {factor!r}: no unit of model {self.card.name} carries it; use "
                                         "a list like 0-4,7, top5, all, or a factor the card names ("
                                         f"{known or 'none yet: ctgen evaluate with factors, export.attach'})")
        return unit

    def traverse(self, z: Any = None, units: str | Sequence[int] = DEFAULT_TRAVERSE_UNITS,
                 offsets: Sequence[float] | None = None) -> np.ndarray:
        """Latent traversal: HU float32 (len(units) * len(offsets), S, S), row-major by unit.

        ``z``: the start latent (L,) (None: the prior mean, zeros). ``units``: indices or a spec such as
        "top5" (the default), "0-4,7", "all". ``offsets``: added to one unit at a time (default -3 … +3 in
        7 steps). Image ``i * len(offsets) + j`` is ``z`` with ``offsets[j]`` added to unit ``units[i]``.
        Raises InputError.
        """
        deltas = traverse_offsets() if offsets is None else offsets
        return self.decode(traverse_codes(self._start(z), self.units(units), deltas))

    def traverse_rows(self, z: Any = None, units: str | Sequence[int] = DEFAULT_TRAVERSE_UNITS,
                      ranges: TraverseRanges | Sequence[str] | str | float | None = None,
                      steps: int = DEFAULT_TRAVERSE_STEPS) -> list[TraverseRow]:
        """The rows of a traversal in physical units where the model has them: one ``TraverseRow`` per unit.

        ``ranges`` (a ``TraverseRanges`` or ``--range`` text, see ``ctgen.latent.parse_ranges``): N standard
        deviations around ``z`` for every unit (for a bound unit, N of the factor's training standard
        deviations), except the bound factors it names (``FACTOR=LO:HI`` absolute, ``FACTOR=N`` ± N in the
        factor's unit). ``steps`` columns (odd; even rounds up). Decode with ``decode_rows``.
        Raises ArgumentError (a range for a factor that no chosen unit is bound to).
        """
        from ctgen.latent import offsets as sd_offsets

        start = self._start(z)
        plan = ranges if isinstance(ranges, TraverseRanges) else parse_ranges(ranges)
        chosen = self.units(units)
        deltas = sd_offsets(plan.sd, steps).astype(np.float64)
        bound_of = {bound.unit: bound for bound in self.bound_units}
        named = {bound_of[unit].factor for unit in chosen if unit in bound_of}
        stray = [factor for factor in plan.factors if factor not in named]
        if stray:
            raise ArgumentError("value_range", f"{', '.join(stray)}: not a bound factor among the rows (--units); "
                                               f"bound: {', '.join(b.factor for b in self.bound_units) or 'none'}")
        rows = []
        for unit in chosen:
            bound = bound_of.get(unit)
            if bound is None:
                rows.append(TraverseRow(unit, (start[unit] + deltas).astype(np.float32), deltas.astype(np.float32)))
                continue
            reading = float(bound.to_value(float(start[unit])))
            factor_range = plan.factors.get(bound.factor)
            if factor_range is None:
                values = reading + bound.std * deltas
            else:
                ends = np.array([factor_range.low, factor_range.high]) + (reading if factor_range.relative else 0.0)
                _latent_of(bound, ends, "value_range")  # before linspace: far ends would overflow it
                values = np.linspace(ends[0], ends[1], len(deltas))
                if factor_range.relative:
                    values[len(deltas) // 2] = reading
            latent = _latent_of(bound, values, "value_range")
            rows.append(TraverseRow(unit, latent, latent - start[unit], bound, values, reading,
                                    factor_range is None or factor_range.relative))
        return rows

    def decode_rows(self, z: Any, rows: Sequence[TraverseRow]) -> np.ndarray:
        """The images of ``traverse_rows`` around ``z`` (None: zeros): HU float32 (len(rows) * K, S, S),
        row-major."""
        return self.decode(sweep(self._start(z), [row.unit for row in rows], [row.z for row in rows]))

    def _start(self, z: Any) -> np.ndarray:
        start = np.zeros(self.latent_size, np.float32) if z is None else np.asarray(z, dtype=np.float32)
        if start.shape != (self.latent_size,):
            raise ArgumentError("z", f"traverse needs one latent vector ({self.latent_size},), got shape {start.shape}")
        return start

    # ---- bound units: physical values --------------------------------------------------------------
    @property
    def bound_units(self) -> list:
        """The units bound to measured factors (``ctgen.card.BoundUnit``), in unit order; [] without binding."""
        return self.card.bound_units

    def bound(self, factor: str, *, argument: str = "set"):
        """The ``BoundUnit`` of ``factor``. Raises ModelError when the model has no bound units and ArgumentError
        (naming ``argument``) when ``factor`` is not one of them."""
        bound = self.card.bound_unit(factor)
        if bound is None:
            self.require_bound()
            names = ", ".join(b.factor for b in self.bound_units)
            raise ArgumentError(argument, f"{factor!r} is not a bound factor of model {self.card.name} "
                                          f"(bound: {names})")
        return bound

    def require_bound(self) -> None:
        """Raise ModelError when the model has no bound units (trained without ``--bind``)."""
        if not self.bound_units:
            raise ModelError(self.model.path, f"model {self.card.name} has no bound units (trained without --bind): "
                                              "no factor can be read or set in physical units")

    def read_factors(self, mu: Any) -> dict[str, Any]:
        """The model's reading of each bound factor, in its unit of measure: {factor: float} for one latent (L,),
        {factor: float64 (N,)} for (N, L). {} without bound units."""
        latent = np.asarray(mu, dtype=np.float64)
        return {bound.factor: (float(bound.to_value(latent[bound.unit])) if latent.ndim == 1
                               else bound.to_value(latent[:, bound.unit]))
                for bound in self.bound_units}

    def set_factors(self, z: Any, values: Mapping[str, float] | Iterable[FactorSetting], *,
                    relative: bool = False) -> np.ndarray:
        """A copy of the latent ``z`` (L,) with bound factors set: ``values`` maps factor -> value in its unit of
        measure (``relative``: changes added to the model's reading), or is ``FactorSetting``s (each absolute or
        relative). Returns float32 (L,). Raises ModelError / ArgumentError (see ``bound``)."""
        edited = np.array(z, dtype=np.float32)
        if edited.shape != (self.latent_size,):
            raise ArgumentError("z", f"needs one latent vector ({self.latent_size},), got shape {edited.shape}")
        for setting in _settings(values, relative=relative):
            bound = self.bound(setting.factor)
            edited[bound.unit] = _latent_of(bound, np.float64(self._target_value(edited, setting)), "set")
        return edited

    def _target_value(self, z: np.ndarray, setting: FactorSetting) -> float:
        """The value in its unit of measure that ``setting`` asks of its factor, starting from the latent ``z``."""
        bound = self.bound(setting.factor)
        return setting.value + (float(bound.to_value(float(z[bound.unit]))) if setting.relative else 0.0)

    def measure(self, hu: np.ndarray) -> dict[str, float]:
        """The image factors (``ctgen.factors.measure_slice``) of an HU slice (S, S) on the model grid."""
        from ctgen.factors import measure_slice

        spacing = float(self.grid.spacing_mm)
        return measure_slice(hu, (spacing, spacing))

    def edit(self, item: Any, values: Mapping[str, float] | Iterable[FactorSetting] | None = None, *,
             relative: bool = False, slice_index: int | None = None, **factors: float) -> Edited:
        """Encode one slice (see ``load``; of a file of several slices the middle one unless ``slice_index``), set
        bound factors of its posterior mean (``values`` and/or keywords, as ``set_factors``: absolute values in
        the factor's unit of measure, or changes with ``relative``), decode, and measure. Returns ``Edited``.
        ``gen.edit("a.dcm", rotation_deg=10)`` asks for 10°; ``relative=True`` for 10° more than the model
        reads. Raises ModelError / ArgumentError (see ``bound``), DicomError, InputError."""
        settings = _settings(values or {}, factors, relative=relative)
        if not settings:
            raise ArgumentError("set", "name at least one bound factor to set")
        for setting in settings:
            self.bound(setting.factor)
        loaded = item if isinstance(item, GridSlice) and item.hu is not None else \
            self.load(item, with_hu=True, slice_index=slice_index)
        mu = self.encode_images(loaded.image[None])[0][0]
        z = self.set_factors(mu, settings)
        hu = self.decode(z)[0]
        before, after = self.measure(loaded.hu), self.measure(hu)
        factors_of = [bound.factor for bound in self.bound_units]
        requested = {setting.factor: self._target_value(mu, setting) for setting in settings}
        return Edited(loaded, mu, z, hu, requested, self.read_factors(mu), self.read_factors(z),
                      {name: before.get(name, float("nan")) for name in factors_of},
                      {name: after.get(name, float("nan")) for name in factors_of})

    def interpolate(self, a: Any, b: Any, steps: int = DEFAULT_INTERPOLATION_STEPS,
                    method: str = DEFAULT_INTERPOLATION) -> np.ndarray:
        """Slices along the path from latent ``a`` to ``b`` (each (L,)), ends included: HU float32 (steps, S, S).

        method: "slerp" (the default: spherical, keeps norms typical of the prior) or "lerp".
        Raises InputError.
        """
        return self.decode(interpolate(np.asarray(a), np.asarray(b), steps, method))

    def _image(self, item: Any, spacing_mm) -> np.ndarray:
        return item.image if isinstance(item, GridSlice) else self.load(item, spacing_mm=spacing_mm).image


def _latent_of(bound: Any, values: np.ndarray, argument: str) -> np.ndarray:
    """``bound.to_z(values)`` as float32, refused (ArgumentError naming ``argument``) beyond MAX_RANGE_SD standard
    deviations of the factor's training values: the decoder has never seen such codes (and 1e308 overflows)."""
    latent = np.asarray(bound.to_z(np.asarray(values, dtype=np.float64)), dtype=np.float64)
    if not np.all(np.abs(latent) <= MAX_RANGE_SD):
        worst = float(np.asarray(values).flat[int(np.argmax(np.nan_to_num(np.abs(latent), nan=np.inf)))])
        raise ArgumentError(argument, f"{bound.factor} {worst:g} {bound.unit_of_measure} lies more than "
                                      f"{MAX_RANGE_SD:g} standard deviations ({bound.std:g}) from its training mean "
                                      f"({bound.mean:g})".replace("  ", " "))
    return latent.astype(np.float32)


def _settings(*groups: Mapping[str, float] | Iterable[FactorSetting], relative: bool) -> list[FactorSetting]:
    """``FactorSetting``s of mappings (factor -> value, ``relative`` or not) and of settings; a factor named twice
    raises ArgumentError ("set"), as its second change would silently add to the first."""
    settings = [one for values in groups for one in
                ([FactorSetting(str(name), float(value), relative) for name, value in values.items()]
                 if isinstance(values, Mapping) else values)]
    twice = sorted({one.factor for one in settings if sum(other.factor == one.factor for other in settings) > 1})
    if twice:
        raise ArgumentError("set", f"{', '.join(twice)} set more than once")
    return settings


def _jobs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, Path, list[int] | None]]:
    """(name, file, slice indices or None for all) per file to read; consecutive FILE#K of one file together."""
    jobs: list[tuple[str, Path, list[int] | None]] = []
    for item in paths:
        path, index = split_source(item)
        if index is not None and jobs and jobs[-1][1] == path and jobs[-1][2] is not None:
            jobs[-1][2].append(index)
        else:
            jobs.append((str(item), path, None if index is None else [index]))
    return jobs


def _handle(on_error: ErrorHandler | None, path: Any, error: CtgenError) -> None:
    if on_error is None:
        raise error
    on_error(path, error)


def _items(slices: Any) -> list[Any]:
    if isinstance(slices, (str, os.PathLike, GridSlice)) or hasattr(slices, "hu"):
        return [slices]
    if isinstance(slices, np.ndarray):
        if slices.ndim == 2:
            return [slices]
        if slices.ndim == 3:
            return list(slices)
        raise InputError(None, f"expected HU (H, W) or (N, H, W), got shape {slices.shape}")
    items = list(slices)
    if not items:
        raise InputError(None, "no slices to encode")
    return items
