"""Bound units: the first B latent units tied to measured factors (``--bind``), the free units kept off them.

Labels are the factors ``ctgen.factors`` measured on every cached slice (train.data), or, for research runs,
a phantom's ``factors.csv`` (``--bind-from``). Each bound factor k is standardised by the mean and standard
deviation of the labelled training slices, y_k = (value − mean_k) / std_k, and unit k's posterior mean μ_k
is tied to it by a Gaussian likelihood, per image (batch mean; a missing label, NaN, adds nothing):

    bind = w · Σ_k mask_k · (μ_k − y_k)² / (2σ²)        w = --bind-weight (default 1), σ = BIND_SIGMA = 0.1

σ = 0.1 of a factor's spread is about the measurement's own noise (|r| 0.96-0.99 against the phantom's truth
leaves sqrt(1 − r²) ≈ 0.14-0.28 of the spread unexplained, part of which is real slice-to-slice variation), and
it makes the term (50 per unit of squared error) outweigh a unit's KL pull towards 0 (β·μ²/2), so μ_k ≈ y_k.

The likelihood is that of the label given the *sampled* unit z_k = μ_k + σ_k·ε, in expectation over ε:
E[(z_k − y_k)²] = (μ_k − y_k)² + σ_k². On the mean alone, a bound unit's posterior σ_k was left to the KL,
which pulls it to 1: the decoder then saw y_k under noise of its own spread (SNR 1), learnt to read the factor
from the free units instead, and setting the unit moved nothing (controllability slope 0.01 on a short run).
With σ_k² in the term, β·KL's σ-part β·½(σ_k² − 1 − log σ_k²) plus w·σ_k²/(2·BIND_SIGMA²) is least at
σ_k² = β / (β + w / BIND_SIGMA²), σ_k ≈ 0.1 for β = w = 1: the bound channel is precise, and a free unit that
copies it only costs KL.

The free units (B..L-1) keep the objective. So that they do not carry the bound factors as well, one of two
terms (``--free-term``) acts on their posterior means, weighted by w_free = --free-weight (default 10):

    covariance  (default) the squared cross-covariance of each free unit's mean with each labelled factor in
                the batch: free = Σ_{j free} Σ_k Cov_batch(μ_j, y_k)², over the rows where y_k is labelled (a
                unit that copies a factor of variance 1 costs w_free). No network, no state: the same under
                every objective, DDP (each process's own batch) and --resume. Blind to non-linear copies.
    adversary   an MLP (free means -> 64 -> 64 -> B, LeakyReLU 0.2) regresses the labels from the free means
                through a gradient reversal: free = Σ_k mask·(ŷ_k − y_k)² / 2, batch mean; the regressor
                descends it (its own Adam, lr of --lr, saved in the checkpoint, gradients averaged under DDP)
                while the encoder ascends it (Ganin & Lempitsky 2015). Catches non-linear copies.

Calibration (phantom, 120 patients x 5 slices at random levels, 64², latent 10, width 16, 280 steps of 64,
bound: rotation_deg, level, head_width_max_mm, head_length_max_mm; 24 validation patients = 120 slices):

    run                         val R² of unit k per factor     |r| of unit k      best other unit's |r|
    covariance, w_free 10       0.74  0.72  0.83  0.63          .86 .85 .92 .81    .26 .47 .23 .36
    no free term (w_free 0)     0.76  0.71  0.83  0.64          .88 .84 .91 .80    .25 .47 .22 .42
    adversary, w_free 10        0.75  0.68  0.81  0.64          .87 .82 .91 .81    .40 .62 .65 .35
    covariance, --bind-fraction 0.1 (10 of 96 patients)
                                0.63  0.17  0.19 -0.30          .80 .63 .84 .50    .30 .57 .62 .52
    unbound (both weights 0)    0.23  0.05 -2.18 -0.44          .64 .25 .37 .23    best unit .74 .61 .48 .58

Each bound unit was the best unit for its factor in every run with all labels (head length at 10 % was not);
at this length the covariance term changed other units' |r| little (head length .42 -> .36) and the adversary
raised them, so covariance is the default.
Whole-image MAE of decode(μ) 246-248 HU bound against 235 HU unbound at this (very short) length.

The latent cycle (``--cycle-weight c``, default 0: off) asks the decoder to *render* what a bound unit says, not
only the encoder to read it. The bind term alone lets the decoder under-respond: in the 14-epoch default,
setting rotation turned the decoded head by 0.71 of the change asked, as ``ctgen evaluate`` measures it, and
level by 0.14.
For one row in CYCLE_SHARE of each batch, one bound unit of the sampled z (chosen at random) takes the value of
another row's, the latents are decoded and encoded again, and the encoder's means of the bound units must give
back the values set (all of them: the changed unit, and the others unchanged):

    cycle = c · Σ_k (μ'_k − z'_k)² / (2σ²), batch mean        z' the changed latents (no gradient), μ' their reading

the same likelihood as the bind term. Its gradient reaches the decoder (render the factor so that it reads
back) and the encoder (read it off generated images as off real ones: the bind term keeps that reading tied to
the measured factor). Both can learn it, and then they may agree on a code of their own: in studies.cycle
(64², 4 epochs, weight 1) the cycle term fell from 41 to 17 while the ventricle unit lost its control (slope
1.53 -> 0.44).
``--cycle-reader frozen`` reads with the encoder's weights held constant (its gradient reaches the decoder
only), so the decoder must render what the encoder, trained on real slices alone, reads as the factor.
The generated images leave BatchNorm's running statistics as they were
(``train.model.running_statistics_kept``). It costs one more decode and encode of a quarter batch per step.

``--bind-fraction f`` keeps the labels of round(f · P) of the P training patients (seeded; at least one):
the few-labels regime. Validation slices keep all their labels, for the per-factor R² the loop logs.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctgen.errors import InputError
from ctgen.factors import FACTORS

__all__ = ["AUTO_MEASURED_MIN", "BIND_SIGMA", "CYCLE_SHARE", "FREE_TERMS", "Binding", "Cycle", "FreeAdversary",
           "bind_terms", "choose_factors",
           "file_labels", "labelled_patients", "make_binding", "r2_sums", "r2_from_sums"]

BIND_SIGMA = 0.1  # the Gaussian likelihood's σ, in standard deviations of the factor
AUTO_MEASURED_MIN = 0.8  # --bind auto: a factor measured on at least this share of the training slices ...
AUTO_SPREAD_MIN = 1e-6  # ... whose standard deviation exceeds this share of its typical magnitude
FREE_TERMS = {
    "covariance": "squared batch cross-covariance of the free units' posterior means with the bound labels",
    "adversary": "an MLP regressing the bound labels from the free units' posterior means through gradient "
                 "reversal (free: its squared error / 2, batch mean)",
}
ADVERSARY_HIDDEN = 64
CYCLE_SHARE = 4  # the latent cycle changes one row in this many of each batch
# columns of a phantom's factors.csv that are bookkeeping, not factors
_CSV_NOT_FACTORS = ("file", "patient_id", "slice_index", "z_mm", "level_start", "level_end", "warp_seed")


@dataclass
class Binding:
    """What is bound: ``factors`` (unit k is bound to factors[k]), their units of measure, the mean and std of
    the labelled training slices (the standardisation), where the labels come from, the share of training
    patients labelled, the weights. ``labelled`` lists the labelled training patients (split keys)."""

    factors: list[str]
    units: list[str]
    mean: list[float]
    std: list[float]
    source: str  # "measured" | "file:<name>"
    fraction: float
    weight: float
    free_weight: float
    labelled: list[str]
    free_term: str = "covariance"  # one of FREE_TERMS
    cycle_weight: float = 0.0  # the latent cycle's weight (Cycle); 0: off
    cycle_reader: str = "joint"  # the cycle's reader: "joint" (the encoder learns from it too) or "frozen"

    def record(self) -> dict[str, Any]:
        """checkpoint["binding"]: everything above, plus σ and the free term's description."""
        return {"factors": list(self.factors), "units": list(self.units), "mean": list(self.mean),
                "std": list(self.std), "source": self.source, "fraction": self.fraction, "weight": self.weight,
                "sigma": BIND_SIGMA, "free_weight": self.free_weight, "free_term": self.free_term,
                "free_term_description": FREE_TERMS[self.free_term], "cycle_weight": self.cycle_weight,
                "cycle_reader": self.cycle_reader, "labelled_patients": list(self.labelled)}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Binding:
        return cls(factors=list(record["factors"]), units=list(record["units"]), mean=list(record["mean"]),
                   std=list(record["std"]), source=record["source"], fraction=record["fraction"],
                   weight=record["weight"], free_weight=record["free_weight"],
                   labelled=list(record["labelled_patients"]), free_term=record.get("free_term", "covariance"),
                   cycle_weight=record.get("cycle_weight", 0.0), cycle_reader=record.get("cycle_reader", "joint"))

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """float (N, B) factor values -> float32 (N, B) standardised labels (NaN stays NaN)."""
        return ((values - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)


def unit_of_measure(name: str) -> str:
    """The unit of a factor: ctgen.factors.FACTORS, else the phantom's table, else ""."""
    for factor in FACTORS:
        if factor.name == name:
            return factor.unit
    try:
        from train.phantom import FACTORS as PHANTOM_FACTORS
    except ImportError:  # the phantom needs nilearn's template; labels from a file do not
        return ""
    return next((factor.unit for factor in PHANTOM_FACTORS if factor.name == name), "")


def choose_factors(spec: str, names: Sequence[str], values: np.ndarray, latent: int) -> list[str]:
    """The factors ``--bind`` names: a comma list of ``names``, or "auto": every factor measured on at least
    AUTO_MEASURED_MIN of the training slices whose values vary. ``values``: float (N, F) of the training
    slices, columns in ``names`` order. Raises InputError for an unknown or repeated name, a factor without
    a single value, or as many factors as latent units (one unit at least must stay free)."""
    if spec.strip() == "auto":
        chosen = []
        for column, name in enumerate(names):
            column_values = values[:, column]
            finite = column_values[np.isfinite(column_values)]
            if len(column_values) and len(finite) >= AUTO_MEASURED_MIN * len(column_values) and len(finite) > 1:
                if finite.std() > AUTO_SPREAD_MIN * max(1.0, float(np.abs(finite).mean())):
                    chosen.append(name)
        if not chosen:
            raise InputError(None, "--bind auto: no factor is measured on most training slices and varies")
    else:
        chosen = [part.strip() for part in spec.split(",") if part.strip()]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise InputError(None, f"--bind: unknown factor {unknown[0]!r} (choose from {', '.join(names)}, or auto)")
        if len(set(chosen)) != len(chosen) or not chosen:
            raise InputError(None, f"--bind: name each factor once, not {spec!r}")
        for name in chosen:
            if not np.isfinite(values[:, list(names).index(name)]).any():
                raise InputError(None, f"--bind: {name} is not measured on any training slice")
    if len(chosen) >= latent:
        raise InputError(None, f"--bind: {len(chosen)} factors ({', '.join(chosen)}) need a latent larger than "
                               f"{latent} (one unit at least stays free)")  # fmt: skip
    return chosen


def labelled_patients(patients: Sequence[str], fraction: float, seed: int) -> list[str]:
    """round(fraction · P) of the P distinct ``patients`` (at least one), sorted, drawn with ``seed``."""
    unique = sorted(set(patients))
    if not 0.0 < fraction <= 1.0:
        raise InputError(None, f"--bind-fraction must be in (0, 1], not {fraction}")
    count = max(1, round(fraction * len(unique)))
    order = np.random.default_rng(seed).permutation(len(unique))
    return sorted(unique[i] for i in order[:count])


def file_labels(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """A phantom's factors.csv as labels of the cached slices ``records``: (factor columns, float (N, F) with
    NaN for a slice the table lacks). Its "file" column is relative to the table's folder. Raises InputError
    when the table cannot be read or names none of the slices."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read ({exc.__class__.__name__})") from None
    if not rows or "file" not in rows[0]:
        raise InputError(path, "not a factors table (no rows, or no 'file' column)")
    columns = [name for name in rows[0] if name not in _CSV_NOT_FACTORS]
    by_file = {os.path.realpath(path.parent / row["file"]): row for row in rows}
    values = np.full((len(records), len(columns)), np.nan)
    found = 0
    for index, record in enumerate(records):
        row = by_file.get(os.path.realpath(record["file"]))
        if row is None:
            continue
        found += 1
        for column, name in enumerate(columns):
            try:
                values[index, column] = float(row[name])
            except (TypeError, ValueError):
                pass
    if not found:
        raise InputError(path, "names none of the training slices' files")
    return columns, values


def make_binding(cfg: Any, names: Sequence[str], values: np.ndarray, train_patients: Sequence[str],
                 source: str) -> Binding:  # fmt: skip
    """The run's Binding from the training slices' factor ``values`` (float (N, F), columns ``names``) and
    their patients: the factors --bind names, the labelled patients of --bind-fraction, the mean and std of
    the labelled slices. Raises InputError (see choose_factors; a bound factor that does not vary there)."""
    chosen = choose_factors(cfg.bind, names, values, cfg.latent)
    labelled = labelled_patients(train_patients, cfg.bind_fraction, cfg.seed)
    keep = np.isin(np.asarray(train_patients), labelled)
    mean, std = [], []
    for name in chosen:
        column = values[keep, list(names).index(name)]
        column = column[np.isfinite(column)]
        spread = float(column.std()) if len(column) > 1 else 0.0
        if not spread > 0 or not math.isfinite(spread):
            raise InputError(None, f"--bind: {name} does not vary on the labelled training slices")
        mean.append(float(column.mean()))
        std.append(spread)
    return Binding(factors=chosen, units=[unit_of_measure(name) for name in chosen], mean=mean, std=std,
                   source=source, fraction=cfg.bind_fraction, weight=cfg.bind_weight, free_weight=cfg.free_weight,
                   labelled=labelled, free_term=cfg.free_term, cycle_weight=cfg.cycle_weight,
                   cycle_reader=cfg.cycle_reader)  # fmt: skip


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class FreeAdversary(torch.nn.Module):
    """Regresses the B bound labels from the free units' means (N, F) through a gradient reversal: (N, B)."""

    def __init__(self, free: int, bound: int, hidden: int = ADVERSARY_HIDDEN):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(free, hidden), torch.nn.LeakyReLU(0.2),
                                       torch.nn.Linear(hidden, hidden), torch.nn.LeakyReLU(0.2),
                                       torch.nn.Linear(hidden, bound))  # fmt: skip

    def forward(self, free_mu: torch.Tensor) -> torch.Tensor:
        with torch.autocast(free_mu.device.type, enabled=False):
            return self.net(_ReverseGradient.apply(free_mu.float()))


class Cycle:
    """The latent cycle of the bound units (module docstring): ``latents(z)`` makes the changed latents z', the
    model decodes and encodes them and hands the means to ``read``, ``loss()`` is the term (unweighted).
    ``generator`` (set before each step) draws the rows and units: the same seed, the same training.
    ``frozen_reader``: the encoder reads the generated images with its weights held constant (--cycle-reader
    frozen), so that only the decoder learns from the term."""

    def __init__(self, bound: int, *, frozen_reader: bool = False):
        self.bound, self.frozen_reader = bound, frozen_reader
        self.generator: torch.Generator | None = None
        self._target: torch.Tensor | None = None
        self._reading: torch.Tensor | None = None

    def latents(self, z: torch.Tensor) -> torch.Tensor:
        """(M, L) latents, M = max(1, N // CYCLE_SHARE): rows of ``z`` (N, L), each with one bound unit set to the
        value another row has (without gradient)."""
        z = z.detach().float()
        count = max(1, len(z) // CYCLE_SHARE)
        draw = {"generator": self.generator, "device": self.generator.device} if self.generator is not None else {}
        rows, donors = torch.randint(0, len(z), (2, count), **draw).to(z.device)
        units = torch.randint(0, self.bound, (count,), **draw).to(z.device)
        changed = z[rows].clone()
        changed[torch.arange(count, device=z.device), units] = z[donors, units]
        self._target = changed[:, : self.bound]
        return changed

    def read(self, mu: torch.Tensor) -> None:
        """The encoder's means (M, L) of the images decoded from ``latents``."""
        self._reading = mu[:, : self.bound].float()

    def loss(self) -> torch.Tensor:
        """Σ_k (μ'_k − z'_k)² / (2σ²), batch mean: scalar float32. Raises RuntimeError before ``read``."""
        if self._reading is None or self._target is None:
            raise RuntimeError("the cycle's latents were not decoded and read back in this step")
        loss = (self._reading - self._target).square().sum(1).mean() / (2 * BIND_SIGMA**2)
        self._reading = self._target = None
        return loss


def bind_terms(mu: torch.Tensor, labels: torch.Tensor, binding: Binding,
               adversary: FreeAdversary | None = None, *,
               logvar: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The binding's part of the loss for posterior means ``mu`` (N, L), their log-variances ``logvar`` (N, L)
    and standardised labels (N, B) with NaN where unlabelled: (weighted bind + free terms, scalar float32;
    {"bind": .., "free": ..} unweighted, detached). Computed in float32. ``adversary``: the free term of
    ``--free-term adversary``. With ``logvar`` the bound term is the label's expected squared error under the
    posterior, (μ_k − y_k)² + σ_k², so the bound units are also kept precise (see the module docstring)."""
    count = len(binding.factors)
    mu = mu.float()
    mask = torch.isfinite(labels)
    target = torch.where(mask, labels, torch.zeros_like(labels))
    bound = mu[:, :count]
    error = (bound - target).square()
    if logvar is not None:
        error = error + logvar.float()[:, :count].exp()
    bind = (error * mask).sum(1).mean() / (2 * BIND_SIGMA**2)
    free = mu[:, count:]
    if adversary is not None:
        predicted = adversary(free)  # (N, B); the encoder's gradient through it is reversed
        free_error = ((predicted - target).square() * mask).sum(1).mean() / 2
        loss = binding.weight * bind + binding.free_weight * free_error
        return loss, {"bind": bind.detach(), "free": free_error.detach()}
    weights = mask.float()  # (N, B)
    seen = weights.sum(0).clamp_min(1.0)  # (B,)
    label_mean = (target * weights).sum(0) / seen  # (B,)
    free_mean = (weights.T @ free) / seen[:, None]  # (B, L - B): each free unit's mean over factor k's rows
    centred_labels = (target - label_mean) * weights  # (N, B)
    cov = (centred_labels.T @ free - centred_labels.sum(0)[:, None] * free_mean) / seen[:, None]  # (B, L - B)
    free_penalty = cov.square().sum()
    loss = binding.weight * bind + binding.free_weight * free_penalty
    return loss, {"bind": bind.detach(), "free": free_penalty.detach()}


def r2_sums(mu: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sums over each bound factor's labelled rows, for ``mu`` (N, L) and labels (N, B), to all-reduce:
    float64 (B, 3 + 3L): n, Σy, Σy², then per unit Σμ, Σμ², Σμy."""
    mu, labels = mu.double(), labels.double()
    mask = torch.isfinite(labels).double()  # (N, B)
    y = torch.nan_to_num(labels) * mask
    return torch.cat([mask.sum(0)[:, None], y.sum(0)[:, None], y.square().sum(0)[:, None],
                      mask.T @ mu, mask.T @ mu.square(), y.T @ mu], dim=1)  # fmt: skip


def r2_from_sums(sums: torch.Tensor, factors: Sequence[str]) -> dict[str, float]:
    """Validation figures per bound factor k (unit k) from summed ``r2_sums``: ``bind_r2_<factor>``, R² =
    1 − Σ(μ_k − y)² / Σ(y − ȳ)² (the share of the label's variance the unit reproduces in the label's own
    scale; can be negative), ``bind_r_<factor>`` the correlation of μ_k with it, ``bind_best_unit_<factor>``
    the unit whose mean correlates most with it (k when the binding works), ``free_max_r_<factor>`` the
    largest |r| of a free unit (B..L-1)."""
    sums = sums.double().cpu()
    count = len(factors)
    latent = (sums.shape[1] - 3) // 3
    result: dict[str, float] = {}
    for k, name in enumerate(factors):
        n, sy, syy = sums[k, :3].tolist()
        sm, smm, smy = sums[k, 3 : 3 + latent], sums[k, 3 + latent : 3 + 2 * latent], sums[k, 3 + 2 * latent :]
        total = syy - sy * sy / n if n > 1 else 0.0
        var_m = smm - sm * sm / max(n, 1)
        r = (smy - sy * sm / max(n, 1)) / torch.sqrt((total * var_m).clamp_min(1e-300))
        r = torch.where(var_m > 0, r, torch.zeros_like(r)) if total > 0 else torch.full_like(r, math.nan)
        residual = syy - 2 * smy[k].item() + smm[k].item()
        result[f"bind_r2_{name}"] = 1 - residual / total if total > 0 else math.nan
        result[f"bind_r_{name}"] = r[k].item()
        result[f"bind_best_unit_{name}"] = int(r.abs().nan_to_num(-1.0).argmax()) if total > 0 else -1
        result[f"free_max_r_{name}"] = r[count:].abs().max().item() if latent > count else math.nan
    return result
