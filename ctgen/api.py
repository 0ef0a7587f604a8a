"""The one pipeline: a loaded model behind numpy calls in Hounsfield units.

``Generator`` is the only place that reads slices onto the model grid, batches, encodes, decodes, samples,
interpolates, traverses and edits bound factors in their units of measure; the commands of ``ctgen.cli`` and
``ctgen explore`` parse options, call it, write and print. Every image is HU, float32 (N, S, S) on the model
grid (S = ``image_size``, ``spacing_mm`` per pixel); every latent is float32 (N, L). Streaming variants
(``iter_load``, ``iter_encode``, ``iter_decode``, ``iter_sample``) keep memory flat over archives of any size.
Reading onto the grid lives in ``ctgen.images.grid_reader`` and the bound factors in ``ctgen.bound_factors``, the two
bases of ``Generator``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctgen.bound_factors import BoundFactors, latent_of
from ctgen.errors import ArgumentError, CtgenError, InputError, suggestion
from ctgen.images.grid_reader import ErrorHandler, GridReader, GridSlice, WarningHandler, handle_error
from ctgen.latent import (
    DEFAULT_INTERPOLATION,
    DEFAULT_INTERPOLATION_STEPS,
    DEFAULT_TRAVERSE_STEPS,
    DEFAULT_TRAVERSE_UNITS,
    TraverseRanges,
    interpolate,
    parse_ranges,
    parse_units,
    prior_batches,
    sweep,
)
from ctgen.latent import offsets as traverse_offsets
from ctgen.latent import traverse as traverse_codes
from ctgen.images.preprocess import Grid, from_model
from ctgen.runtime.prior import PRIORS
from ctgen.io.sources import gather_files, slice_sources, split_source

# gather_files, slice_sources and split_source (ctgen.io.sources) stay importable here for the commands
__all__ = ["Encoded", "Generator", "Reconstruction", "TraverseRow", "gather_files",
           "load_generator", "slice_sources", "split_source"]


def load_generator(name_or_path: str | os.PathLike | None = None, *, device: str = "auto") -> Generator:
    """Load a model folder (a path, a name found as ``ctgen.runtime.model.resolve_model_dir`` says: ./models/NAME, then
    the shipped models; None for "default") as a ``Generator``.

    device: "auto", "cpu" or "cuda" (see ``ctgen.load_model``). Raises ModelError / InputError.
    """
    from ctgen.runtime.model import load_model

    return Generator(load_model(name_or_path, device=device))


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
    the same minus the start's value). For a bound unit, ``bound`` (``ctgen.runtime.card.BoundUnit``) and ``values``
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


class Generator(GridReader, BoundFactors):
    """A loaded β-VAE (``ctgen.runtime.model.Model``) behind numpy calls in HU.

    ``model``, ``card`` (a ``ctgen.runtime.card.ModelCard``), ``grid``, ``latent_size`` and ``image_size`` describe it;
    ``units_by_kl`` ranks the latent units (most informative first), ``kl_per_unit`` holds their KL in nats
    (None if unknown) and ``unit_factors`` the factor the card names for a unit. ``bound_units`` are the units
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
    def unit_factors(self) -> dict[int, str]:
        return self.card.unit_factors

    @property
    def batch_size(self) -> int:
        """Images per inference call: 16 of 128² on the CPU (fewer for larger images), more on CUDA."""
        return self.model.batch_size
    # ---- latents -----------------------------------------------------------------------------------
    @property
    def has_fitted_prior(self) -> bool:
        return self.model.prior is not None

    def latents(self, n: int = 1, *, seed: int = 0, temperature: float = 1.0, prior: str = "auto") -> np.ndarray:
        """``n`` latents from a prior: float32 (n, L); same seed, same values.

        prior: "fitted" (the mixture fitted to the training slices' codes, ``ctgen.runtime.prior``), "standard"
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

        ``slices``: one item or a sequence of items, each a DICOM path, a ``ctgen.io.dicom.Slice``, an HU array
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
        (every slice of a volume or multi-frame file, as ``iter_load`` names them; a folder gives the files of
        scan's selection, as ``gather_files`` takes them).

        An unreadable file raises its DicomError, or is handed to ``on_error(path, error)`` and skipped.
        """
        step = batch_size or self.batch_size
        sources: list[str] = []
        images: list[np.ndarray] = []
        found: list[tuple[str, ...]] = []
        for path, loaded in self.iter_load(paths, lookahead=max(64, 2 * step)):
            if isinstance(loaded, CtgenError):
                handle_error(on_error, path, loaded)
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
        (``ctgen.evaluation.metrics.head_error``: original > -500 HU) against what the model can reach: the original
        through its HU map."""
        from ctgen.evaluation.metrics.reconstruction import head_error, head_mask  # only reconstruct needs them (start-up)

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
                handle_error(on_error, path, loaded)
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
            known = list(dict.fromkeys([b.factor for b in self.bound_units]
                                       + sorted(set(self.unit_factors.values()))))
            names = ", ".join(known) or "none yet: ctgen evaluate with factors, export.attach"
            raise ArgumentError("units", f"cannot parse {factor!r}: no unit of model {self.card.name} carries it"
                                         f"{suggestion(factor, known)}; use a list like 0-4,7, top5, all, or a factor "
                                         f"the card names ({names})")
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
            if factor_range is None:  # ± SD around the reading, within what the factor can be (no negative area)
                values = _within_range(reading, reading + bound.std * deltas, bound.factor)
            else:
                ends = np.array([factor_range.low, factor_range.high]) + (reading if factor_range.relative else 0.0)
                latent_of(bound, ends, "value_range")  # before linspace: far ends would overflow it
                values = np.linspace(ends[0], ends[1], len(deltas))
                if factor_range.relative:
                    values[len(deltas) // 2] = reading
            latent = latent_of(bound, values, "value_range")
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
    def interpolate(self, a: Any, b: Any, steps: int = DEFAULT_INTERPOLATION_STEPS,
                    method: str = DEFAULT_INTERPOLATION) -> np.ndarray:
        """Slices along the path from latent ``a`` to ``b`` (each (L,)), ends included: HU float32 (steps, S, S).

        method: "slerp" (the default: spherical, keeps norms typical of the prior) or "lerp".
        Raises InputError.
        """
        return self.decode(interpolate(np.asarray(a), np.asarray(b), steps, method))

    def _image(self, item: Any, spacing_mm) -> np.ndarray:
        return item.image if isinstance(item, GridSlice) else self.load(item, spacing_mm=spacing_mm).image


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


def _within_range(reading: float, values: np.ndarray, factor: str) -> np.ndarray:
    """A bound row's values ``values`` (evenly spaced, ``reading`` in the middle) kept within what ``factor`` can be:
    a side that passes its limit ends there, its columns spread evenly between the reading and the limit (clipping
    them would repeat the limit in several columns: a level row around 0.4 showed "1" twice)."""
    from ctgen.factors import physical_range  # bound models only (start-up)

    low, high = physical_range(factor)
    half = len(values) // 2
    left = min(reading, max(low, float(values[0])))
    right = max(reading, min(high, float(values[-1])))
    if left == values[0] and right == values[-1]:
        return values
    return np.concatenate([np.linspace(left, reading, half + 1)[:-1], [reading],
                           np.linspace(reading, right, half + 1)[1:]])
