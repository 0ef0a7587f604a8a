"""The notebook API: a loaded model with sample / encode / decode / traverse / interpolate in Hounsfield units.

Built on ``ctgen.model`` (ONNX Runtime), ``ctgen.latent`` and ``ctgen.preprocess``; ``ctgen explore``
serves the same object. Every image is HU, float32 (N, S, S) on the model grid (S = ``image_size``,
``spacing_mm`` per pixel); every latent is float32 (N, L).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ctgen.errors import InputError
from ctgen.latent import lerp, parse_units, sample_prior, slerp, traverse
from ctgen.preprocess import from_model, to_model

__all__ = ["Generator", "load_generator"]

_INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def load_generator(name_or_path: str | os.PathLike | None = None, *, device: str = "auto") -> Generator:
    """Load a model folder (a name under ``models/``, a path, or None for "default") as a ``Generator``.

    device: "auto", "cpu" or "cuda" (see ``ctgen.load_model``). Raises ModelError / InputError.
    """
    from ctgen.model import load_model

    return Generator(load_model(name_or_path, device=device))


class Generator:
    """A loaded β-VAE (``ctgen.model.Model``) behind numpy calls in HU.

    ``model``, ``grid``, ``latent_size`` and ``image_size`` describe it; ``units_by_kl`` ranks the
    latent units (most informative first) and ``kl_per_unit`` holds their KL in nats (None if unknown).
    """

    def __init__(self, model: Any):
        self.model = model
        self.grid = model.grid
        self.latent_size: int = model.latent_size
        self.image_size: int = model.grid.size

    def __repr__(self) -> str:
        return f"Generator({self.model!r})"

    @property
    def card(self) -> dict[str, Any]:
        return self.model.card

    @property
    def units_by_kl(self) -> list[int]:
        return self.model.units_by_kl()

    @property
    def kl_per_unit(self) -> list[float] | None:
        values = (self.card.get("metrics") or {}).get("kl_per_unit")
        if not values or len(values) != self.latent_size:
            return None
        return [float(value) for value in values]

    def latents(self, n: int = 1, *, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """``n`` latents from the prior N(0, temperature²): float32 (n, L); same seed, same values."""
        return sample_prior(n, self.latent_size, seed=seed, temperature=temperature)

    def sample(self, n: int = 1, *, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """``n`` random slices from the prior: HU float32 (n, S, S). Same seed, same images."""
        return self.decode(self.latents(n, seed=seed, temperature=temperature))

    def encode(self, slices: Any, *, spacing_mm: tuple[float, float] | float | None = None) -> np.ndarray:
        """Posterior means mu, float32 (N, L), of CT slices.

        ``slices``: one item or a sequence of items, each a DICOM path, a ``ctgen.dicom.Slice``, or an
        HU array (H, W); an HU array (N, H, W) is N slices. Arrays use ``spacing_mm`` ((row, column) or
        one number, in mm); without it they must already be on the model grid (S, S). Every slice is
        resampled, centred and windowed by ``ctgen.preprocess.to_model``.
        Raises DicomError (unreadable file) or InputError (bad array or spacing).
        """
        images = np.stack([self._to_model(item, spacing_mm) for item in _items(slices)])
        mu, _ = self.model.encode(images[:, None])
        return mu

    def decode(self, z: Any) -> np.ndarray:
        """Latents float (N, L), or one (L,), to slices: HU float32 (N, S, S). Raises InputError."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z[None]
        return from_model(self.model.decode(z), self.grid)

    def reconstruct(self, slices: Any, *, spacing_mm: tuple[float, float] | float | None = None) -> np.ndarray:
        """``decode(encode(slices))``: HU float32 (N, S, S)."""
        return self.decode(self.encode(slices, spacing_mm=spacing_mm))

    def traverse(self, z: Any = None, units: str | Sequence[int] = "top5",
                 offsets: Sequence[float] = (-3.0, -1.5, 0.0, 1.5, 3.0)) -> np.ndarray:
        """Latent traversal: HU float32 (len(units) * len(offsets), S, S), row-major by unit.

        ``z``: the start latent (L,) (None: the prior mean, zeros). ``units``: indices or a spec such as
        "top5", "0-4,7", "all". Image ``i * len(offsets) + j`` is ``z`` with ``offsets[j]`` added to unit
        ``units[i]``. Raises InputError.
        """
        start = np.zeros(self.latent_size, np.float32) if z is None else np.asarray(z, dtype=np.float32)
        if start.shape != (self.latent_size,):
            raise InputError(None, f"traverse needs one latent vector ({self.latent_size},), got shape {start.shape}")
        if isinstance(units, str):
            units = parse_units(units, self.latent_size, self.units_by_kl)
        return self.decode(traverse(start, [int(unit) for unit in units], offsets))

    def interpolate(self, a: Any, b: Any, steps: int = 8, method: str = "slerp") -> np.ndarray:
        """Slices along the path from latent ``a`` to ``b`` (each (L,)), ends included: HU float32 (steps, S, S).

        method: "slerp" (spherical, keeps norms typical of the prior) or "lerp". Raises InputError.
        """
        interpolation = _INTERPOLATIONS.get(method)
        if interpolation is None:
            raise InputError("--method", f"unknown interpolation {method!r} (choose lerp or slerp)")
        return self.decode(interpolation(np.asarray(a), np.asarray(b), steps))

    def _to_model(self, item: Any, spacing_mm: tuple[float, float] | float | None) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            from ctgen.dicom import read_slice

            item = read_slice(item)
        if hasattr(item, "hu") and hasattr(item, "spacing_mm"):
            return to_model(item.hu, item.spacing_mm, self.grid)
        hu = np.asarray(item, dtype=np.float32)
        if hu.ndim != 2:
            raise InputError(None, f"expected an HU slice (H, W), got shape {hu.shape}")
        if spacing_mm is None:
            if hu.shape != (self.image_size, self.image_size):
                raise InputError(None, f"an HU array of shape {hu.shape} needs spacing_mm "
                                       f"(only ({self.image_size}, {self.image_size}) is taken as the model grid)")
            spacing_mm = self.grid.spacing_mm
        if np.ndim(spacing_mm) == 0:
            spacing_mm = (float(spacing_mm), float(spacing_mm))  # type: ignore[arg-type]
        return to_model(hu, spacing_mm, self.grid)  # type: ignore[arg-type]


def _items(slices: Any) -> list[Any]:
    if isinstance(slices, (str, os.PathLike)) or hasattr(slices, "hu"):
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
