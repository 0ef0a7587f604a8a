"""Sampling priors: the standard normal N(0, I), and a Gaussian mixture fitted to the training slices'
posterior means (``prior.npz`` in a model folder, written by ``python -m export.prior``).

The VAE's aggregate posterior does not fill N(0, I): draws from the standard prior land in holes that the
decoder never learned to fill (samples that are not heads). The fitted mixture follows where the data's codes
lie. numpy only; sampling is seeded and prefix-stable (sample i of n equals sample i of m > i).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctgen.errors import ArgumentError, ModelError

__all__ = ["PRIOR_FILE", "PRIORS", "MixturePrior", "load_prior", "save_prior"]

PRIOR_FILE = "prior.npz"
PRIORS = ("auto", "fitted", "standard")  # auto: fitted when the model has one


@dataclass(frozen=True)
class MixturePrior:
    """A Gaussian mixture over latents: ``weights`` (K,), ``means`` (K, L), ``cholesky`` (K, L, L) lower factors
    of the component covariances."""

    weights: np.ndarray
    means: np.ndarray
    cholesky: np.ndarray

    @property
    def latent_size(self) -> int:
        return int(self.means.shape[1])

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def sample(self, n: int, *, seed: int, temperature: float = 1.0) -> np.ndarray:
        """``n`` latents float32 (n, L): component k with probability weights[k], then means[k] + T · L_k ε.

        Components and noise come from two streams of ``seed``, so the first rows do not depend on ``n``.
        """
        if n < 0:
            raise ArgumentError("n", f"must be >= 0, got {n}")
        if not temperature >= 0 or not np.isfinite(temperature):
            raise ArgumentError("temperature", f"must be a finite number >= 0, got {temperature}")
        chosen = np.random.default_rng([seed, 1]).choice(self.components, size=n, p=self.weights)
        noise = np.random.default_rng([seed, 2]).standard_normal((n, self.latent_size))
        z = self.means[chosen] + temperature * np.einsum("nij,nj->ni", self.cholesky[chosen], noise)
        return z.astype(np.float32)


def save_prior(prior: MixturePrior, path: str | os.PathLike) -> None:
    """Write ``prior`` as a .npz of plain float64 arrays (no pickles), atomically."""
    from ctgen.atomic import atomic_file

    with atomic_file(path, force=True) as handle:
        np.savez(handle, weights=prior.weights, means=prior.means, cholesky=prior.cholesky)


def load_prior(path: str | os.PathLike, latent_size: int, data: bytes | None = None) -> MixturePrior:
    """Read and check a prior file (``data``: its bytes, when already read). Raises ModelError naming the file."""
    path = Path(path)
    try:
        with np.load(path if data is None else io.BytesIO(data), allow_pickle=False) as archive:
            weights, means, cholesky = (np.asarray(archive[key], dtype=np.float64)
                                        for key in ("weights", "means", "cholesky"))
    except (OSError, KeyError, ValueError) as error:
        raise ModelError(path, f"not a prior file ({type(error).__name__}: {error})") from None
    k = len(weights)
    if (weights.ndim != 1 or k < 1 or means.shape != (k, latent_size) or cholesky.shape != (k, latent_size, latent_size)
            or not all(np.isfinite(a).all() for a in (weights, means, cholesky))
            or (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-6):
        raise ModelError(path, f"a prior for {latent_size} latent units needs weights (K,) summing to 1, means "
                               f"(K, {latent_size}) and cholesky (K, {latent_size}, {latent_size}), all finite")
    return MixturePrior(weights / weights.sum(), means, cholesky)
