"""Controllability of bound units: does setting a unit to a factor's value give an image with that value?

A bound unit (``ctgen.runtime.card.BoundUnit``) is set across its range on encoded slices, the results are decoded, and the
factor is measured on the outputs with the measurement that labelled the training slices (``ctgen.factors``).
This module holds the arithmetic on those numbers; ``ctgen.evaluation.evaluate`` runs the model and the measurements.

- ``response``: slope, intercept and R² of measured against requested values (slope 1, R² 1 is ideal).
- ``leakage``: how far each other factor moves, in its standard deviations per standard deviation requested
  (0 is ideal), from the slope within each source slice, so that slices' own values cancel.
- ``nearest_values``: a value for images on which a factor cannot be measured alone (a slice's level), read off
  the nearest of reference images whose values are known.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Z_POINTS", "Z_SPAN", "leakage", "nearest_values", "requested_z", "response", "set_unit"]

Z_POINTS = 7  # values requested per source slice
Z_SPAN = 2.0  # from -Z_SPAN to +Z_SPAN standard deviations of the training patients' measurements


def requested_z(points: int = Z_POINTS, span: float = Z_SPAN) -> np.ndarray:
    """Standardised values to request, float64 (points,), evenly from -span to +span."""
    return np.linspace(-span, span, points)


def set_unit(mu: np.ndarray, unit: int, z_values: np.ndarray) -> np.ndarray:
    """Latents float32 (N, V, L): each of the N latents (N, L) with ``unit`` set to each of the V ``z_values``."""
    latents = np.repeat(np.asarray(mu, np.float32)[:, None, :], len(z_values), axis=1)
    latents[:, :, unit] = np.asarray(z_values, np.float32)[None, :]
    return latents


def response(requested: np.ndarray, measured: np.ndarray) -> dict:
    """Least-squares line of ``measured`` against ``requested`` (float (R, V) each, same unit; NaN where a
    value could not be measured, left out): {"slope", "intercept", "r2", "mae", "n_points", "n_unmeasured"};
    the figures are None with fewer than 3 measured points or requests that do not vary."""
    requested, measured = np.asarray(requested, np.float64).ravel(), np.asarray(measured, np.float64).ravel()
    finite = np.isfinite(requested) & np.isfinite(measured)
    x, y = requested[finite], measured[finite]
    out = {"slope": None, "intercept": None, "r2": None, "mae": None, "n_points": int(finite.sum()),
           "n_unmeasured": int((~finite).sum())}
    if len(x) < 3 or np.ptp(x) == 0:
        return out
    dx, dy = x - x.mean(), y - y.mean()
    slope = float(np.sum(dx * dy) / np.sum(dx * dx))
    residual = dy - slope * dx
    total = float(np.sum(dy * dy))
    out.update(slope=slope, intercept=float(y.mean() - slope * x.mean()),
               r2=1.0 - float(np.sum(residual * residual)) / total if total > 0 else None,
               mae=float(np.mean(np.abs(y - x))))
    return out


def leakage(z_values: np.ndarray, measured: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """|d factor / d z| in the factor's standard deviations per standard deviation requested, float64 (K,).

    ``z_values``: the requested standardised values, (V,) or (R, V); ``measured``: float (R, V, K), K factors
    measured on the outputs of R source slices at V requests (NaN: not measured); ``sd``: (K,) each factor's
    standard deviation. The slope is fitted within each source slice (its own mean removed) and pooled; NaN for
    a factor with fewer than two measured outputs in any slice, or a standard deviation that is not positive."""
    measured = np.asarray(measured, np.float64)
    rows, points, factors = measured.shape
    z = np.broadcast_to(np.asarray(z_values, np.float64), (rows, points))
    out = np.full(factors, np.nan)
    for k in range(factors):
        values = measured[:, :, k]
        finite = np.isfinite(values)
        usable = finite.sum(axis=1) >= 2
        if not usable.any() or not np.isfinite(sd[k]) or sd[k] <= 0:
            continue
        zz, vv, ok = z[usable], np.where(finite[usable], values[usable], 0.0), finite[usable]
        count = ok.sum(axis=1, keepdims=True)
        dz = np.where(ok, zz - (zz * ok).sum(axis=1, keepdims=True) / count, 0.0)
        dv = np.where(ok, vv - vv.sum(axis=1, keepdims=True) / count, 0.0)
        spread = float(np.sum(dz * dz))
        if spread > 0:
            out[k] = abs(float(np.sum(dz * dv)) / spread) / float(sd[k])
    return out


def nearest_values(images: np.ndarray, references: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each image float (V, H, W), the value (``values`` (M,)) of its nearest reference image (M, H, W) by
    mean squared difference, float64 (V,); references with a NaN value are not used (all NaN: NaN)."""
    values = np.asarray(values, np.float64)
    known = np.isfinite(values)
    if not known.any():
        return np.full(len(images), np.nan)
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    ref = np.asarray(references, np.float64)[known].reshape(int(known.sum()), -1)
    distance = (flat * flat).sum(1)[:, None] - 2 * flat @ ref.T + (ref * ref).sum(1)[None, :]
    return values[known][np.argmin(distance, axis=1)]
