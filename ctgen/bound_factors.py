"""Bound units in their factors' units of measure: read, set and edit (``ctgen.api.Generator`` inherits it).

A model trained with ``--bind`` carries one latent unit per measured factor (the card's ``binding``, each a
``ctgen.runtime.card.BoundUnit``); ``BoundFactors`` maps between those units and values in degrees, mm, HU. The host
class provides ``card``, ``model``, ``grid``, ``latent_size``, ``load``, ``encode_images`` and ``decode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctgen.errors import ArgumentError, ModelError, suggestion
from ctgen.images.grid_reader import GridSlice
from ctgen.latent import MAX_RANGE_SD, FactorSetting

__all__ = ["BoundFactors", "Edited", "latent_of"]


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


class BoundFactors:
    """Reading, setting and editing bound factors; a base of ``ctgen.api.Generator``."""

    card: Any  # ctgen.runtime.card.ModelCard
    model: Any  # ctgen.runtime.model.Model
    grid: Any  # ctgen.images.preprocess.Grid
    latent_size: int

    @property
    def bound_units(self) -> list:
        """The units bound to measured factors (``ctgen.runtime.card.BoundUnit``), in unit order; [] without binding."""
        return self.card.bound_units

    def bound(self, factor: str, *, argument: str = "set"):
        """The ``BoundUnit`` of ``factor``. Raises ModelError when the model has no bound units and ArgumentError
        (naming ``argument``) when ``factor`` is not one of them."""
        bound = self.card.bound_unit(factor)
        if bound is None:
            self.require_bound()
            names = [b.factor for b in self.bound_units]
            raise ArgumentError(argument, f"{factor!r} is not a bound factor of model {self.card.name}"
                                          f"{suggestion(factor, names)} (bound: {', '.join(names)})")
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
            edited[bound.unit] = latent_of(bound, np.float64(self._target_value(edited, setting)), "set")
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


def latent_of(bound: Any, values: np.ndarray, argument: str) -> np.ndarray:
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
