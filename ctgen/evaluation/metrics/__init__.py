"""Metrics of a model's outputs and codes, numpy only (no torch, scipy or scikit-learn), pure functions on arrays.

- ``reconstruction``: ``head_error`` (MAE and RMSE in HU inside the head), ``mae_hu``, ``psnr`` and ``ssim`` at a display window.
- ``activity``: ``kl_per_unit`` (nats), ``active_units`` by KL and by the variance of mu.
- ``memorisation``: ``nearest_neighbour_distances`` and ``memorisation_report``.
- ``disentangle``: MIG, β-VAE, FactorVAE, DCI and SAP against known factors (``fit`` holds their small learners).

Every public name is re-exported here: ``from ctgen.evaluation.metrics import mig`` works.
"""

from __future__ import annotations

from ctgen.evaluation.metrics.activity import (
    active_units,
    active_units_by_variance,
    kl_per_unit,
    latent_activity,
    mu_variance,
    units_by_kl,
)
from ctgen.evaluation.metrics.disentangle import (
    beta_vae_score,
    dci,
    discretize,
    disentanglement_report,
    factor_vae_score,
    identity_nmi,
    mig,
    sap,
)
from ctgen.evaluation.metrics.memorisation import downsample, memorisation_report, nearest_neighbour_distances
from ctgen.evaluation.metrics.reconstruction import (
    BRAIN_WINDOW,
    HeadError,
    head_error,
    head_mask,
    mae_hu,
    psnr,
    reconstruction_report,
    ssim,
    window_unit,
)

__all__ = [
    "BRAIN_WINDOW",
    "window_unit",
    "head_mask",
    "HeadError",
    "head_error",
    "mae_hu",
    "psnr",
    "ssim",
    "reconstruction_report",
    "kl_per_unit",
    "active_units",
    "units_by_kl",
    "mu_variance",
    "active_units_by_variance",
    "latent_activity",
    "discretize",
    "mig",
    "identity_nmi",
    "beta_vae_score",
    "factor_vae_score",
    "dci",
    "sap",
    "disentanglement_report",
    "downsample",
    "nearest_neighbour_distances",
    "memorisation_report",
]
