"""Latent activity: per-unit KL (nats), active units by KL and by the variance of mu (Burda et al. 2016).

numpy only, pure functions on (N, L) posteriors.
"""

from __future__ import annotations

import numpy as np

from ctgen.defaults import ACTIVE_UNIT_KL
from ctgen.errors import InputError

__all__ = ["kl_per_unit", "active_units", "units_by_kl", "mu_variance", "active_units_by_variance",
           "latent_activity"]


def _posterior(mu: np.ndarray, logvar: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or (logvar is not None and np.shape(logvar) != mu.shape):
        raise InputError(None, f"need mu and logvar of shape (N, L), got {mu.shape} and {np.shape(logvar)}")
    return mu, None if logvar is None else np.asarray(logvar, dtype=np.float64)


def kl_per_unit(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z_i|x) || N(0, 1)) per latent unit, averaged over the N images: float64 (L,), nats.

    ``mu``, ``logvar``: (N, L), the encoder's diagonal Gaussian (logvar = ln σ²);
    KL_i = mean_n 0.5 (mu² + exp(logvar) - logvar - 1). Sums to the model's KL term.
    """
    mu, logvar = _posterior(mu, logvar)
    return np.mean(0.5 * (mu**2 + np.exp(logvar) - logvar - 1.0), axis=0)


def active_units(kl: np.ndarray, threshold: float = ACTIVE_UNIT_KL) -> int:
    """Number of units whose KL (nats, from ``kl_per_unit``) exceeds ``threshold``."""
    return int(np.sum(np.asarray(kl) > threshold))


def units_by_kl(kl: np.ndarray) -> list[int]:
    """Unit indices sorted by decreasing KL (ties: lower index first), as the model card stores them."""
    return [int(i) for i in np.argsort(-np.asarray(kl, dtype=np.float64), kind="stable")]


def mu_variance(mu: np.ndarray) -> np.ndarray:
    """Variance over the N images of each unit's posterior mean, Cov_x(E_q[z_i|x]): float64 (L,)."""
    mu, _ = _posterior(mu)
    return mu.var(axis=0)


def active_units_by_variance(mu: np.ndarray, threshold: float = ACTIVE_UNIT_KL) -> int:
    """Active units as Burda, Grosse & Salakhutdinov (2016) define them: Cov_x(E_q[z_i|x]) > ``threshold``.

    Counts units whose mean moves with the input. A unit at the prior (mu ≈ 0, logvar ≈ 0) is inactive
    by both this and the KL count; the two disagree when the posterior variance shrinks without the
    mean moving (KL > 0 but no information about x), which the variance count calls inactive.
    """
    return int(np.sum(mu_variance(mu) > threshold))


def latent_activity(mu: np.ndarray, logvar: np.ndarray, threshold: float = 0.01) -> dict:
    """Both activity measures for (N, L) posteriors: per-unit KL (nats) and mu variance, their counts."""
    kl = kl_per_unit(mu, logvar)
    variance = mu_variance(mu)
    return {
        "kl_per_unit": kl.tolist(),
        "kl_total": float(kl.sum()),
        "units_by_kl": units_by_kl(kl),
        "active_units": active_units(kl, threshold),
        "mu_variance": variance.tolist(),
        "active_units_by_variance": int(np.sum(variance > threshold)),
        "threshold": threshold,
    }
