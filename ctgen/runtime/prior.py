"""Sampling priors: the standard normal N(0, I), and a Gaussian mixture fitted to the training slices'
posterior means (``prior.npz`` in a model folder, written by ``python -m export.prior``).

The VAE's aggregate posterior does not fill N(0, I): draws from the standard prior land in holes that the
decoder never learned to fill (samples that are not heads). The fitted mixture follows where the data's codes
lie. numpy only; sampling is seeded and prefix-stable (sample i of n equals sample i of m > i).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctgen.errors import ModelError
from ctgen.latent import check_draw

__all__ = ["MAX_PRIOR_BYTES", "MAX_PRIOR_COMPONENTS", "PRIOR_FILE", "PRIORS", "MixturePrior", "load_prior",
           "save_prior"]

PRIOR_FILE = "prior.npz"
PRIORS = ("auto", "fitted", "standard")  # auto: fitted when the model has one
MAX_PRIOR_COMPONENTS = 1024  # the exporter fits up to 32
MAX_PRIOR_BYTES = 256 << 20  # the file, and its arrays as float64: 32 components of 512 units take 64 MiB
_ARRAYS = ("weights", "means", "cholesky")


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
    from ctgen.io.atomic import atomic_file

    with atomic_file(path, force=True) as handle:
        np.savez(handle, weights=prior.weights, means=prior.means, cholesky=prior.cholesky)


def load_prior(path: str | os.PathLike, latent_size: int, data: bytes | None = None) -> MixturePrior:
    """Read and check a prior file (``data``: its bytes, when already read).

    Before any array is loaded: the file is a zip archive of at most a few members holding weights.npy,
    means.npy and cholesky.npy, whose headers declare float arrays of shapes (K,), (K, L) and (K, L, L) with
    L = ``latent_size``, 1 <= K <= MAX_PRIOR_COMPONENTS, and at most MAX_PRIOR_BYTES in all. Then the values:
    finite, weights >= 0 summing to 1. Raises ModelError naming the file.
    """
    path = Path(path)
    if data is None:
        from ctgen.io.regular_file import read_regular

        data = read_regular(path, MAX_PRIOR_BYTES, ModelError, missing="missing")
    if len(data) > MAX_PRIOR_BYTES:
        raise ModelError(path, f"larger than {MAX_PRIOR_BYTES >> 20} MiB; refused")
    try:
        arrays = _read_arrays(path, data, latent_size)
    except (OSError, EOFError, ValueError, NotImplementedError, zipfile.BadZipFile, zlib.error) as error:
        raise ModelError(path, f"not a prior file ({type(error).__name__}: {str(error)[:120]})") from None
    weights, means, cholesky = arrays
    if (not all(np.isfinite(a).all() for a in arrays) or (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-6):
        raise ModelError(path, "the prior's arrays must be finite, its weights >= 0 and summing to 1")
    return MixturePrior(weights / weights.sum(), means, cholesky)


def _read_arrays(path: Path, data: bytes, latent_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weights, means, cholesky as float64, their npy headers checked before their data is read."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - (1 << 16) - 22))  # the zip's end record
    if end < 0 or len(data) < end + 22:
        raise ModelError(path, "not a prior file (not a zip archive of .npy arrays)")
    if struct.unpack("<H", data[end + 10 : end + 12])[0] > 8:
        raise ModelError(path, "not a prior file (more than 8 members)")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        missing = [name for name in _ARRAYS if f"{name}.npy" not in names]
        if missing:
            raise ModelError(path, f"not a prior file (no {', '.join(missing)} array)")
        headers = {}
        for name in _ARRAYS:
            with archive.open(f"{name}.npy") as member:
                headers[name] = _npy_header(path, name, member)
        components = headers["weights"][0][0] if len(headers["weights"][0]) == 1 else 0
        expected = {"weights": (components,), "means": (components, latent_size),
                    "cholesky": (components, latent_size, latent_size)}
        if not 1 <= components <= MAX_PRIOR_COMPONENTS or any(headers[n][0] != expected[n] for n in _ARRAYS):
            shown = ", ".join(f"{name} {headers[name][0]}" for name in _ARRAYS)
            raise ModelError(path, f"a prior for {latent_size} latent units needs weights (K,), means "
                                   f"(K, {latent_size}) and cholesky (K, {latent_size}, {latent_size}) with K from "
                                   f"1 to {MAX_PRIOR_COMPONENTS}; the file holds {shown}")
        total = sum(math.prod(expected[name]) * 8 for name in _ARRAYS)
        if total > MAX_PRIOR_BYTES:
            raise ModelError(path, f"its arrays take {total:,} bytes, more than {MAX_PRIOR_BYTES >> 20} MiB")
        arrays = []
        for name in _ARRAYS:
            with archive.open(f"{name}.npy") as member:
                arrays.append(np.asarray(np.lib.format.read_array(member, allow_pickle=False), dtype=np.float64))
    return arrays[0], arrays[1], arrays[2]


def _npy_header(path: Path, name: str, member) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(member)
    if version not in ((1, 0), (2, 0)):
        raise ModelError(path, f"not a prior file ({name}.npy has format version {version})")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(member, max_header_size=1 << 14)
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.hasobject:
        raise ModelError(path, f"{name} is {dtype}, not float32 or float64")
    return tuple(int(n) for n in shape), dtype
