"""Sampling priors: the standard normal N(0, I), and a Gaussian mixture fitted to the training slices'
posterior means (``prior.npz`` in a model folder, written by ``python -m export.prior``).

The VAE's aggregate posterior does not fill N(0, I): draws from the standard prior land in holes that the
decoder never learned to fill (samples that are not heads). The fitted mixture follows where the data's codes
lie. numpy only; sampling is seeded and prefix-stable (sample i of n equals sample i of m > i).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctgen.errors import ModelError
from ctgen.latent import check_draw

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
        batches = self.batches(n, seed=seed, temperature=temperature, batch_size=max(n, 1))
        return np.concatenate([np.zeros((0, self.latent_size), np.float32), *batches])

    def batches(self, n: int, *, seed: int, temperature: float = 1.0, batch_size: int) -> Iterator[np.ndarray]:
        """``sample(n, ...)`` in consecutive float32 (≤ batch_size, L) batches: the same values, each batch drawn
        when it is asked for (flat memory for any ``n``). Raises ArgumentError here."""
        check_draw(n, temperature, batch_size)
        return self._batches(np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2]), n, temperature,
                             batch_size)

    def _batches(self, components: np.random.Generator, noise: np.random.Generator, n: int, temperature: float,
                 batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            chosen = components.choice(self.components, size=count, p=self.weights)
            epsilon = noise.standard_normal((count, self.latent_size))
            z = self.means[chosen] + temperature * np.einsum("nij,nj->ni", self.cholesky[chosen], epsilon)
            yield z.astype(np.float32)


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
