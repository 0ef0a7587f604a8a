"""Operations on latent vectors: prior samples, interpolation, traversal and its rows' labels, unit and shard specs.

Pure numpy; latents are float32 arrays of shape (N, L) (or (L,) for one vector).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from ctgen.defaults import (
    DEFAULT_INTERPOLATION,
    DEFAULT_INTERPOLATION_STEPS,
    DEFAULT_TRAVERSE_RANGE,
    DEFAULT_TRAVERSE_STEPS,
    DEFAULT_TRAVERSE_UNITS,
)
from ctgen.errors import ArgumentError, InputError

__all__ = [
    "FactorRange",
    "FactorSetting",
    "INTERPOLATIONS",
    "TraverseRanges",
    "DEFAULT_INTERPOLATION",
    "DEFAULT_INTERPOLATION_STEPS",
    "DEFAULT_TRAVERSE_UNITS",
    "DEFAULT_TRAVERSE_RANGE",
    "DEFAULT_TRAVERSE_STEPS",
    "interpolate",
    "sample_prior",
    "prior_batches",
    "check_draw",
    "lerp",
    "slerp",
    "offsets",
    "traverse",
    "parse_units",
    "parse_ranges",
    "parse_setting",
    "physical_text",
    "caption_text",
    "cell_name",
    "change_text",
    "row_label",
    "row_name",
    "row_summary",
    "span_text",
    "sweep",
    "parse_shard",
    "take_shard",
    "iter_batches",
]

T = TypeVar("T")



def sample_prior(n: int, latent_size: int, *, seed: int, temperature: float = 1.0) -> np.ndarray:
    """Draw ``n`` latents from the prior N(0, temperature² I): float32 (n, latent_size).

    Same seed → same values, whatever the caller later does with them (batching, slicing):
    sample ``i`` of ``sample_prior(n, ...)`` equals sample ``i`` of ``sample_prior(m, ...)``
    for every ``m > i``. Raises ArgumentError for n < 0 or temperature < 0.
    """
    batches = prior_batches(n, latent_size, seed=seed, temperature=temperature, batch_size=max(n, 1))
    return np.concatenate([np.zeros((0, latent_size), np.float32), *batches])


def prior_batches(n: int, latent_size: int, *, seed: int, temperature: float = 1.0,
                  batch_size: int) -> Iterator[np.ndarray]:
    """``sample_prior(n, ...)`` in consecutive float32 (≤ batch_size, latent_size) batches: the same values,
    each batch drawn when it is asked for, so memory stays flat for any ``n``. Raises ArgumentError here."""
    check_draw(n, temperature, batch_size)
    return _normal_batches(np.random.default_rng(seed), n, latent_size, temperature, batch_size)


def _normal_batches(rng: np.random.Generator, n: int, latent_size: int, temperature: float,
                    batch_size: int) -> Iterator[np.ndarray]:
    # Draw in float64 then cast: one row after another from the same stream, so the prefix property holds
    # (batches or not) and results do not depend on numpy's float32 ziggurat.
    for start in range(0, n, batch_size):
        z = rng.standard_normal((min(batch_size, n - start), latent_size))
        yield (z * temperature).astype(np.float32)


def check_draw(n: int, temperature: float, batch_size: int = 1) -> None:
    """Raise ArgumentError unless ``n`` latents can be drawn at ``temperature`` in batches of ``batch_size``."""
    if n < 0:
        raise ArgumentError("n", f"must be >= 0, got {n}")
    if not temperature >= 0 or not np.isfinite(temperature):
        raise ArgumentError("temperature", f"must be a finite number >= 0, got {temperature}")
    if batch_size < 1:
        raise ArgumentError("batch_size", f"must be >= 1, got {batch_size}")


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise InputError(None, f"interpolation needs two vectors of one length, got {a.shape} and {b.shape}")
    return a, b


def _fractions(steps: int) -> np.ndarray:
    if steps < 2:
        raise ArgumentError("steps", f"must be >= 2 (both ends are included), got {steps}")
    return np.linspace(0.0, 1.0, steps)


def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Linear interpolation from ``a`` to ``b`` (both (L,)), ends included: float32 (steps, L)."""
    a, b = _pair(a, b)
    t = _fractions(steps)[:, None]
    return ((1.0 - t) * a + t * b).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation from ``a`` to ``b`` (both (L,)), ends included: float32 (steps, L).

    The angle is taken between the directions of ``a`` and ``b`` and the weights applied to the
    unnormalised vectors, so norms change smoothly between the two ends. Parallel or
    anti-parallel vectors (no unique great circle) and zero vectors fall back to ``lerp``.
    """
    a, b = _pair(a, b)
    t = _fractions(steps)[:, None]
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0.0 or norm_b == 0.0:
        return lerp(a, b, steps)
    cos = float(np.clip(np.dot(a / norm_a, b / norm_b), -1.0, 1.0))
    omega = np.arccos(cos)
    sin = np.sin(omega)
    if sin < 1e-6:
        return lerp(a, b, steps)
    out = (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / sin
    return out.astype(np.float32)


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def interpolate(a: np.ndarray, b: np.ndarray, steps: int = DEFAULT_INTERPOLATION_STEPS,
                method: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """``lerp`` or ``slerp`` from ``a`` to ``b`` (both (L,)) by name: float32 (steps, L). Raises ArgumentError."""
    function = INTERPOLATIONS.get(method)
    if function is None:
        raise ArgumentError("method", f"unknown interpolation {method!r} (choose {' or '.join(INTERPOLATIONS)})")
    return function(a, b, steps)


def offsets(value_range: float = DEFAULT_TRAVERSE_RANGE, steps: int = DEFAULT_TRAVERSE_STEPS) -> np.ndarray:
    """Symmetric offsets from ``-value_range`` to ``+value_range``: float32 (K,), always holding 0.

    ``steps`` odd gives exactly ``steps`` offsets with 0 in the middle; an even ``steps`` is
    rounded up to the next odd number so that the unchanged latent keeps the middle column.
    """
    if steps < 1:
        raise ArgumentError("steps", f"must be >= 1, got {steps}")
    if not value_range > 0 or not np.isfinite(value_range):
        raise ArgumentError("value_range", f"must be a finite number > 0, got {value_range}")
    steps += 1 - steps % 2
    values = np.linspace(-value_range, value_range, steps)
    values[steps // 2] = 0.0
    return values.astype(np.float32)


def traverse(z: np.ndarray, units: Sequence[int], offsets: Sequence[float]) -> np.ndarray:
    """Latent traversal grid: float32 (len(units) * len(offsets), L), row-major by unit.

    Row ``i * len(offsets) + j`` is ``z`` with ``offsets[j]`` added to unit ``units[i]``
    (offsets are relative to the value in ``z``; use zeros for the prior mean).
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 1:
        raise InputError(None, f"traverse needs one latent vector (L,), got shape {z.shape}")
    deltas = np.asarray(offsets, dtype=np.float32)
    return sweep(z, units, [z[unit] + deltas if 0 <= unit < z.shape[0] else deltas for unit in units])


def sweep(z: np.ndarray, units: Sequence[int], values: Sequence[Sequence[float]]) -> np.ndarray:
    """Latent grid: float32 (len(units) * K, L), row-major by unit, where row ``i * K + j`` is ``z`` with unit
    ``units[i]`` set to ``values[i][j]`` (each row K latent values). Raises ArgumentError for a unit outside z."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 1:
        raise InputError(None, f"a sweep needs one latent vector (L,), got shape {z.shape}")
    columns = {len(row) for row in values}
    if len(values) != len(units) or len(columns) > 1:
        raise InputError(None, f"{len(values)} rows of values for {len(units)} units, of lengths {sorted(columns)}")
    count = columns.pop() if columns else 0
    grid = np.repeat(z[None, :], len(units) * count, axis=0)
    for row, unit in enumerate(units):
        if not 0 <= unit < z.shape[0]:
            raise ArgumentError("units", f"unit {unit} out of range 0-{z.shape[0] - 1}")
        grid[row * count : (row + 1) * count, unit] = np.asarray(values[row], dtype=np.float32)
    return grid


# ---- physical values of bound units (ctgen.runtime.card.BoundUnit)
@dataclass(frozen=True)
class FactorSetting:
    """One ``--set`` of ``ctgen edit``: the bound factor's new ``value`` in its unit of measure, or with
    ``relative`` the change added to the model's reading of the slice."""

    factor: str
    value: float
    relative: bool = False

    def __str__(self) -> str:
        """As ``--set`` takes it (``parse_setting`` reads it back): "rotation_deg=+10", "rotation_deg==-10"."""
        if self.relative:
            return f"{self.factor}={self.value:+g}"
        return f"{self.factor}{'==' if self.value < 0 else '='}{self.value:g}"


_SETTING = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(=?)\s*(\S+)\s*$")


def parse_setting(text: str) -> FactorSetting:
    """``"rotation_deg=+10"`` (relative: +10 on the reading), ``"rotation_deg=-10"`` (relative),
    ``"ventricle_mm2=40"`` (absolute) or ``"rotation_deg==-10"`` (absolute, for negative values).
    Raises ArgumentError ("set")."""
    match = _SETTING.match(str(text))
    number = _finite(match.group(3)) if match else None
    if match is None or number is None:
        raise ArgumentError("set", f"cannot parse {text!r}; use FACTOR=VALUE (absolute), FACTOR=+CHANGE or "
                                   "FACTOR=-CHANGE (relative to the model's reading), FACTOR==-VALUE (a negative "
                                   "absolute value)")
    relative = not match.group(2) and match.group(3)[0] in "+-"
    return FactorSetting(match.group(1), number, relative)


@dataclass(frozen=True)
class FactorRange:
    """A bound factor's traverse range: from ``low`` to ``high`` (absolute values in its unit of measure), or with
    ``relative`` from ``-high`` to ``+high`` around the model's reading of the slice."""

    low: float
    high: float
    relative: bool = False


@dataclass(frozen=True)
class TraverseRanges:
    """``--range`` of ``ctgen traverse``: ``sd`` standard deviations for every row, except the bound factors named
    in ``factors``."""

    sd: float = DEFAULT_TRAVERSE_RANGE
    factors: dict[str, FactorRange] = field(default_factory=dict)


MAX_RANGE_SD = 100.0  # --range N: beyond this the decoder sees only noise (and 1e308 overflows)


def parse_ranges(specs: Sequence[str] | str | float | None) -> TraverseRanges:
    """``--range`` items (each may hold several, comma-separated): ``N`` (± N standard deviations: of the prior for
    a free unit, of the factor's training values for a bound one), ``FACTOR=LO:HI`` (a bound factor from LO to HI
    in its unit of measure) or ``FACTOR=N`` (± N in its unit around the model's reading). None: the default.
    Raises ArgumentError ("value_range")."""
    if specs is None:
        return TraverseRanges()
    items = [specs] if isinstance(specs, (str, int, float)) else list(specs)
    sd, factors = DEFAULT_TRAVERSE_RANGE, {}
    for part in (piece.strip() for item in items for piece in str(item).split(",")):
        name, equals, value = part.partition("=")
        if not equals:
            number = _finite(part)
            if number is None or not 0 < number <= MAX_RANGE_SD:
                raise ArgumentError("value_range", f"cannot parse {part!r}; use N (standard deviations, 0 < N <= "
                                                   f"{MAX_RANGE_SD:g}), FACTOR=LO:HI or FACTOR=N (in the factor's "
                                                   "unit of measure)")
            sd = number
            continue
        name = name.strip()
        low, colon, high = value.partition(":")
        bounds = [_finite(low), _finite(high)] if colon else [_finite(value)]
        if not name.isidentifier() or None in bounds:
            raise ArgumentError("value_range", f"cannot parse {part!r}; use FACTOR=LO:HI or FACTOR=N")
        if colon and not bounds[0] < bounds[1]:
            raise ArgumentError("value_range", f"{part!r}: LO must be below HI")
        if not colon and not bounds[0] > 0:
            raise ArgumentError("value_range", f"{part!r}: N must be > 0 (the range is -N..+N around the reading)")
        factors[name] = FactorRange(bounds[0], bounds[1], False) if colon else FactorRange(-bounds[0], bounds[0], True)
    return TraverseRanges(sd, factors)


def _finite(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_SYMBOLS = {"deg": "°", "mm²": " mm2"}  # the pictures' font has "°" but neither "²" nor "\u2212"


def physical_text(value: float, unit_of_measure: str, *, signed: bool = False) -> str:
    """A factor's value for a label: "15°", "-3.5°", "142 mm", "40.2 mm2", "0.12"; ``signed`` for changes
    ("+15°", "+0°")."""
    if not math.isfinite(value):
        return "n/a"
    value, size = value + 0.0, abs(value)  # + 0.0: no "-0"
    digits = 0 if size >= 100 or value == round(value) else 1 if size >= 1 else 2
    number = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    suffix = _SYMBOLS.get(unit_of_measure, f" {unit_of_measure}" if unit_of_measure else "")
    return number + suffix


_RANGE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")
_TOP = re.compile(r"^top\s*(\d+)$")


def parse_units(spec: str, latent_size: int, units_by_kl: Sequence[int] | None = None) -> list[int]:
    """Parse a unit selection into a list of unit indices (0-based), in the order given.

    ``"0-4,7"`` (ranges inclusive, duplicates dropped), ``"top5"`` (the five units with the
    highest KL, from the model card's ranking ``units_by_kl``) or ``"all"``. Raises InputError
    (path ``--units``) for junk, units outside 0..latent_size-1 or ``topK`` without a ranking.
    """
    text = spec.strip().lower()
    if text == "all":
        return list(range(latent_size))
    top = _TOP.match(text)
    if top:
        k = int(top.group(1))
        if not units_by_kl:
            raise ArgumentError("units", f"{spec!r}: the model card has no KL ranking; list units instead (e.g. 0-4)")
        if not 1 <= k <= len(units_by_kl):
            raise ArgumentError("units", f"{spec!r}: K must be between 1 and {len(units_by_kl)}")
        return [int(u) for u in units_by_kl[:k]]
    units: list[int] = []
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ArgumentError("units", f"cannot parse {spec!r}; use a list like 0-4,7 or top5 or all")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ArgumentError("units", f"empty range {part.strip()!r} in {spec!r}")
        for unit in range(first, last + 1):
            if unit >= latent_size:
                raise ArgumentError("units", f"unknown unit {unit}: the model has units 0-{latent_size - 1}")
            if unit not in units:
                units.append(unit)
    return units


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse ``"K/N"`` into ``(k, n)``: shard K of N, **1-based** (``1/4`` … ``4/4``).

    Raises InputError (path ``--shard``) unless 1 <= K <= N.
    """
    match = _SHARD.match(spec)
    if not match:
        raise ArgumentError("shard", f"cannot parse {spec!r}; use K/N with 1 <= K <= N, e.g. 1/4")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ArgumentError("shard", f"{spec!r}: need 1 <= K <= N (shards are numbered from 1)")
    return k, n


def take_shard(items: Sequence[T], k: int, n: int) -> Sequence[T]:
    """Shard ``k`` of ``n`` (1-based) of ``items``: a contiguous block, sizes differing by at most one.

    Concatenating shards 1..n in order gives back ``items``; sort ``items`` first for
    a split that is the same on every machine.
    """
    if not 1 <= k <= n:
        raise ArgumentError("shard", f"{k}/{n}: need 1 <= K <= N")
    size, extra = divmod(len(items), n)
    start = (k - 1) * size + min(k - 1, extra)
    stop = start + size + (1 if k <= extra else 0)
    return items[start:stop]


def iter_batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    if size < 1:
        raise ArgumentError("batch_size", f"must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The labels of a traversal row (``ctgen.api.TraverseRow``): pictures, file names, series, --json


def row_name(row) -> str:
    """"u3", or "u0 rotation_deg" for a bound unit."""
    return f"u{row.unit}" + (f" {row.bound.factor}" if row.bound is not None else "")


def row_label(card, row) -> str:
    """"u0 rotation_deg (deg)" for a bound unit, "u3 (KL 1.20)" (with the card's factor) for the others."""
    if row.bound is None:
        return card.unit_label(row.unit)
    unit = row.bound.unit_of_measure.replace("²", "2")  # the pictures' font has no "²" (see _SYMBOLS)
    return f"u{row.unit} {row.bound.factor}" + (f" ({unit})" if unit else "")


def change_text(row, column: int) -> str:
    """What a column does to its unit, independent of the start: "+1.0" (standard deviations), "+15°" (a bound
    unit's change), "15°" (a value of an absolute range)."""
    if row.bound is None:
        return f"{float(row.offsets[column]):+.1f}"
    unit, value = row.bound.unit_of_measure, float(row.values[column])
    return physical_text(value, unit) if not row.relative else physical_text(value - row.reading, unit, signed=True)


def caption_text(row, column: int, middle: str) -> str:
    """A picture's label: the change in standard deviations ("+1.0", the middle one "recon"), or for a bound unit
    the change and the value in its unit ("+15° (16.2°)", "+0° (1.2°)"), or the value of an absolute range."""
    if row.bound is None:
        return change_text(row, column) if row.offsets[column] else middle
    if not row.relative:
        return change_text(row, column)
    return f"{change_text(row, column)} ({physical_text(float(row.values[column]), row.bound.unit_of_measure)})"


def cell_name(row, column: int, digits: int) -> str:
    """u03_+1.00 (standard deviations); a bound unit u00_rotation_deg_+15 (the change in its unit) or, for an
    absolute range, u00_rotation_deg_=-20 (the value)."""
    if row.bound is None:
        return f"u{row.unit:0{digits}d}_{float(row.offsets[column]):+.2f}"
    value = float(row.values[column]) - (row.reading if row.relative else 0.0)
    return f"u{row.unit:0{digits}d}_{row.bound.factor}_{'' if row.relative else '='}{value:+.4g}"


def span_text(row) -> str:
    """The columns' span: offsets in standard deviations, or a bound unit's change or values in its unit."""
    if row.bound is None:
        return f"{float(row.offsets[0]):+g}..{float(row.offsets[-1]):+g}"
    return f"{change_text(row, 0)}..{change_text(row, len(row.values) - 1)}"


def row_summary(row, captions) -> dict:
    """A row in --json: its unit, latent values, offsets and ``captions``; a bound unit's factor values too."""
    summary = {"unit": row.unit, "z": [float(v) for v in row.z], "offsets": [float(v) for v in row.offsets],
               "labels": list(captions)}
    if row.bound is not None:
        summary.update(factor=row.bound.factor, unit_of_measure=row.bound.unit_of_measure,
                       values=[float(v) for v in row.values], reading=row.reading, relative=row.relative)
    return summary
