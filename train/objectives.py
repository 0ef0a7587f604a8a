"""Training objectives behind one interface: ``make_objective(cfg, ...)`` -> an ``Objective``.

All terms are per image, averaged over the batch, in the units of ``train.model`` (recon = squared error
summed over pixels, KL summed over units, nats):

    betavae    recon + β·KL (Higgins et al. 2017), or recon + γ·|KL − C| with C annealed (Burgess et al. 2018)
    tcvae      recon + α·MI + β·TC + γ·dimKL (β-TCVAE, Chen et al. 2018). The KL to the prior splits into
               index-code mutual information MI = E[log q(z|x) − log q(z)], total correlation
               TC = E[log q(z) − Σ_j log q(z_j)] and dimension-wise KL = E[Σ_j log q(z_j) − log p(z_j)],
               with z the batch's samples and q(z) the aggregate posterior over the N training slices,
               estimated from the minibatch of M by stratified sampling: the sample's own posterior
               weighs 1/N, each other one (N − 1)/(N(M − 1)) (an unbiased estimate of q(z); with M = N
               it is exact). MI + TC + dimKL is the sampled KL, so α = β = γ = 1 is the β-VAE with β = 1.
    factorvae  recon + KL + γ·TC (Kim & Mnih 2018): TC ≈ E[log D(z)/(1 − D(z))], D an MLP (6 layers,
               LeakyReLU 0.2) that tells samples of q(z) from samples whose units were shuffled across
               the batch independently (the product of marginals); D trains on the same batch's codes
               after each step with its own Adam (lr 1e-4, betas 0.5/0.9), saved in the checkpoint.
    pairs      Ada-GVAE (Locatello et al. 2020) on pairs of slices of one patient (they share every
               patient factor, differ in level): δ_j = KL(q(z_j|x1) || q(z_j|x2)), τ = ½(max δ + min δ);
               units with δ_j < τ are shared: both posteriors become N(½(μ1 + μ2), ½(σ1² + σ2²)); then
               recon + β·KL on both images. Patients with a single slice are left out (a slice paired with
               itself shares every unit, which is plain β-VAE and teaches nothing about sharing).

Every objective takes the reconstruction term of --recon (l2 or l1, train.model) and adds the image
terms of train.losses (MS-SSIM, focal frequency, patch adversarial) when their weights are set, and with
--bind the bound units' terms of train.binding on the encoder's own posterior means (before pairs averages
shared units).

Validation reports recon, KL per unit and val_loss in each objective's own terms: betavae and pairs
recon + β·KL of each slice's own posterior (pairing is a training device), tcvae its weighted sum with N
the validation slices, factorvae recon + KL + γ·TC with the current discriminator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train import ddp
from train.data import derived_seed
from train.binding import Binding, Cycle, FreeAdversary, bind_terms
from train.losses import ImageLoss
from train.model import ACTIVE_UNIT_KL, RECONSTRUCTION_LOSSES, LossTerms, vae_loss

__all__ = [
    "OBJECTIVES",
    "Objective",
    "make_objective",
    "log_normal",
    "tc_decomposition",
    "Discriminator",
    "permute_dims",
    "ada_gvae_aggregate",
    "slice_groups",
]

OBJECTIVES = ("betavae", "tcvae", "factorvae", "pairs")
DISCRIMINATOR_LAYERS = 6  # Kim & Mnih: 6 layers of 1000 units
DISCRIMINATOR_BETAS = (0.5, 0.9)


class Objective:
    """β-VAE; the base of the others. The loop calls, per step, ``loss`` -> backward -> optimizer step ->
    ``after_step``; per validation batch ``evaluate``; per epoch ``epoch_order`` and ``val_loss``.
    Subclasses override the underscored versions; the public ones add the image terms (train.losses)."""

    name = "betavae"
    images_per_item = 1  # items of epoch_order are single slices (pairs: two)
    extras: tuple[str, ...] = ()  # names of LossTerms.extra in training (logged as train_<name>)
    val_extras: tuple[str, ...] = ()  # ... and in validation (val_<name>)

    def __init__(self, cfg: Any, *, train_records: Sequence[dict[str, Any]], device: torch.device,
                 autocast: Callable[[], Any] = nullcontext, ctx: ddp.Dist = ddp.Dist(),
                 binding: Binding | None = None):  # fmt: skip
        self.cfg, self.device, self.autocast, self.ctx = cfg, device, autocast, ctx
        self.dataset_size = len(train_records)
        self.items_per_epoch = self.dataset_size
        self.image_loss = ImageLoss(cfg, device=device, ctx=ctx)
        self.binding = binding
        self._encoder_mu: torch.Tensor | None = None
        self._encoder_logvar: torch.Tensor | None = None
        self.free_adversary: FreeAdversary | None = None
        if binding is not None and binding.free_term == "adversary":
            bound = len(binding.factors)
            self.free_adversary = FreeAdversary(cfg.latent - bound, bound).to(device)
            self.free_adversary_optimizer = torch.optim.Adam(self.free_adversary.parameters(), lr=cfg.lr)
        self.cycle = (Cycle(len(binding.factors), frozen_reader=cfg.cycle_reader == "frozen")
                      if binding is not None and cfg.cycle_weight > 0 else None)
        self.extras = (type(self).extras + self.image_loss.names + (("bind", "free") if binding else ())
                       + (("cycle",) if self.cycle is not None else ()))
        self.val_extras = type(self).val_extras + self.image_loss.val_names

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Indices into the training slices, (K,) or (K, 2) for pairs, in this epoch's seeded order."""
        generator = torch.Generator().manual_seed(derived_seed(self.cfg.seed, epoch))
        return torch.randperm(self.items_per_epoch, generator=generator)

    def capacity_at(self, step: int) -> float | None:
        if self.cfg.capacity_max is None:
            return None
        return self.cfg.capacity_max * min(1.0, step / max(1, self.cfg.capacity_steps))

    def loss(self, model: nn.Module, images: torch.Tensor, noise: torch.Tensor, *, step: int,
             labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> LossTerms:  # fmt: skip
        """images float32 (B, 1, S, S), noise (B, L), with a binding the standardised labels (B, K) (NaN: none):
        the terms of one training step (loss to minimise). ``generator`` draws the latent cycle's rows."""
        if self.cycle is not None:
            self.cycle.generator = generator
        terms, recon = self._loss(model, images, noise, step=step)
        if self.binding is not None:
            bound, extra = bind_terms(self._encoder_mu, labels, self.binding, self.free_adversary,
                                      logvar=self._encoder_logvar)
            terms.loss = terms.loss + bound
            terms.extra.update(extra)
        if self.cycle is not None:
            cycle = self.cycle.loss()
            terms.loss = terms.loss + self.cfg.cycle_weight * cycle
            terms.extra["cycle"] = cycle.detach()
        self._encoder_mu = self._encoder_logvar = None
        return self._add_image_terms(terms, images, recon, step)

    def _forward(self, model: nn.Module, images: torch.Tensor, noise: torch.Tensor,
                 posterior: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """model(images) under autocast, keeping the encoder's own posterior (means, log-variances) for the binding terms
        (inside forward, so that DDP sees one call)."""

        def keep(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self._encoder_mu, self._encoder_logvar = mu, logvar
            return (mu, logvar) if posterior is None else posterior(mu, logvar)

        with self.autocast():  # without a binding the call is exactly the objective's own
            if self.cycle is not None:  # the latent cycle runs inside the same call (DDP sees one forward)
                return model(images, noise=noise, posterior=keep, cycle=self.cycle)
            return model(images, noise=noise, posterior=keep if self.binding is not None else posterior)

    def _loss(self, model: nn.Module, images: torch.Tensor, noise: torch.Tensor, *, step: int
              ) -> tuple[LossTerms, torch.Tensor]:  # fmt: skip
        """The objective's own terms and the reconstruction (B, 1, S, S) they came from."""
        recon, mu, logvar = self._forward(model, images, noise)
        cfg = self.cfg
        terms = self._vae_loss(images, recon, mu, logvar, beta=cfg.beta, capacity=self.capacity_at(step),
                               gamma=cfg.gamma)  # fmt: skip
        return terms, recon

    def _vae_loss(self, images: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  **weights: Any) -> LossTerms:  # fmt: skip
        return vae_loss(images, recon, mu, logvar, reconstruction=self.cfg.recon, **weights)

    def _add_image_terms(self, terms: LossTerms, images: torch.Tensor, recon: torch.Tensor, step: int | None
                         ) -> LossTerms:  # fmt: skip
        image = self.image_loss(images, recon, step)
        if image.extra:  # no image terms: the loss stays the objective's own, bit for bit
            terms.loss = terms.loss + image.loss
            terms.extra.update(image.extra)
        return terms

    def after_step(self, terms: LossTerms, generator: torch.Generator) -> None:
        """Called after the optimizer step: the patch discriminator trains here, and the bound units' free
        adversary (its gradients came with the loss's), then ``_after_step``."""
        self.image_loss.after_step(terms.extra)
        if self.free_adversary is not None:
            ddp.average_gradients(self.ctx, self.free_adversary.parameters())
            self.free_adversary_optimizer.step()
            self.free_adversary_optimizer.zero_grad(set_to_none=True)
        self._after_step(terms, generator)

    def _after_step(self, terms: LossTerms, generator: torch.Generator) -> None:
        """FactorVAE trains its discriminator here."""

    def evaluate(self, images: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                 noise: torch.Tensor, *, dataset_size: int) -> LossTerms:  # fmt: skip
        """Validation terms from the model's outputs on one batch (no grad); ``dataset_size`` slices in all."""
        terms = self._evaluate(images, recon, mu, logvar, noise, dataset_size=dataset_size)
        return self._add_image_terms(terms, images, recon, None)

    def _evaluate(self, images: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  noise: torch.Tensor, *, dataset_size: int) -> LossTerms:  # fmt: skip
        return self._vae_loss(images, recon, mu, logvar)

    def val_loss(self, recon: float, kl: float, extras: dict[str, float], step: int) -> float:
        return self._val_loss(recon, kl, extras, step) + self.image_loss.val_loss(extras)

    def _val_loss(self, recon: float, kl: float, extras: dict[str, float], step: int) -> float:
        capacity = self.capacity_at(step)
        return recon + self.cfg.beta * kl if capacity is None else recon + self.cfg.gamma * abs(kl - capacity)

    def record(self) -> dict[str, Any]:
        """What checkpoint["loss"] (and so the model card) says about the objective."""
        cfg = self.cfg
        capacity = None
        if cfg.capacity_max is not None:
            capacity = {"max_nats": cfg.capacity_max, "steps": cfg.capacity_steps, "gamma": cfg.gamma}
        return {"objective": self.name, "reconstruction": RECONSTRUCTION_LOSSES[cfg.recon], "beta": cfg.beta,
                "capacity": capacity, "active_unit_kl_nats": ACTIVE_UNIT_KL,
                "losses": self.image_loss.record()}  # fmt: skip

    def state_dict(self) -> dict[str, Any] | None:
        """Extra state for the checkpoint (None: nothing beyond the model and its optimizer)."""
        adversary = {}
        if self.free_adversary is not None:
            adversary = {"free_adversary": self.free_adversary.state_dict(),
                         "free_adversary_optimizer": self.free_adversary_optimizer.state_dict()}  # fmt: skip
        return {**(self._state_dict() or {}), **self.image_loss.state_dict(), **adversary} or None

    def _state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._load_state_dict(state)
        self.image_loss.load_state_dict(state)
        if self.free_adversary is not None:
            self.free_adversary.load_state_dict((state or {})["free_adversary"])
            self.free_adversary_optimizer.load_state_dict((state or {})["free_adversary_optimizer"])

    def _load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass


# ------------------------------------------------------------------------------------------ β-TCVAE
def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)), broadcast, float32 nats."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).square() * torch.exp(-logvar))


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(MI, TC, dimKL), each a scalar batch mean in nats, for samples z (M, L) of posteriors (mu, logvar)
    of a minibatch drawn from ``dataset_size`` data points (stratified estimate of q(z); module docstring).
    """
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    m, n = z.shape[0], max(dataset_size, z.shape[0])
    log_q_zx = log_normal(z, mu, logvar).sum(1)  # (M,)
    log_p_z = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)  # (M,)
    cross = log_normal(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (M, M, L): [i, j] = q(z_i | x_j)
    other = math.log((n - 1) / (n * max(m - 1, 1))) if n > 1 else -math.inf
    log_weight = torch.full((m, m), other, device=z.device)
    log_weight.fill_diagonal_(-math.log(n))
    log_q_z = torch.logsumexp(cross.sum(2) + log_weight, dim=1)  # (M,)
    log_q_marginals = torch.logsumexp(cross + log_weight[:, :, None], dim=1).sum(1)  # (M,)
    mi = (log_q_zx - log_q_z).mean()
    tc = (log_q_z - log_q_marginals).mean()
    dim_kl = (log_q_marginals - log_p_z).mean()
    return mi, tc, dim_kl


def _sample(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return mu.float() + torch.exp(0.5 * logvar.float()) * noise.float()  # the z BetaVAE.forward decoded


class TCVAE(Objective):
    name = "tcvae"
    extras = val_extras = ("mi", "tc", "dim_kl")

    def _terms(self, images, recon, mu, logvar, noise, dataset_size: int) -> LossTerms:
        terms = self._vae_loss(images, recon, mu, logvar)
        mi, tc, dim_kl = tc_decomposition(_sample(mu, logvar, noise), mu, logvar, dataset_size)
        cfg = self.cfg
        terms.loss = terms.recon + cfg.tc_alpha * mi + cfg.tc_beta * tc + cfg.tc_gamma * dim_kl
        terms.extra = {"mi": mi.detach(), "tc": tc.detach(), "dim_kl": dim_kl.detach()}
        return terms

    def _loss(self, model, images, noise, *, step):
        recon, mu, logvar = self._forward(model, images, noise)
        return self._terms(images, recon, mu, logvar, noise, self.dataset_size), recon

    def _evaluate(self, images, recon, mu, logvar, noise, *, dataset_size):
        return self._terms(images, recon, mu, logvar, noise, dataset_size)

    def _val_loss(self, recon, kl, extras, step):
        cfg = self.cfg
        return recon + cfg.tc_alpha * extras["mi"] + cfg.tc_beta * extras["tc"] + cfg.tc_gamma * extras["dim_kl"]

    def record(self):
        cfg = self.cfg
        return {**super().record(), "beta": cfg.tc_beta, "capacity": None,
                "weights": {"mi": cfg.tc_alpha, "tc": cfg.tc_beta, "dim_kl": cfg.tc_gamma},
                "estimator": "stratified minibatch sampling of q(z) (own posterior 1/N, others (N-1)/(N(M-1)))",
                "dataset_size": self.dataset_size}  # fmt: skip


# ------------------------------------------------------------------------------------------ FactorVAE
class Discriminator(nn.Module):
    """(N, L) codes -> (N,) logits of "drawn from q(z)" against "drawn from the product of its marginals"."""

    def __init__(self, latent: int, hidden: int = 1000, layers: int = DISCRIMINATOR_LAYERS):
        super().__init__()
        sizes = [latent] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for size_in, size_out in zip(sizes[:-1], sizes[1:]):
            blocks += [nn.Linear(size_in, size_out), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*blocks, nn.Linear(sizes[-1], 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each column of z (N, L) across the batch with its own permutation: every unit keeps its
    marginal, the dependence between units is gone (samples of Π_j q(z_j))."""
    keys = torch.rand(z.shape, generator=generator, device=z.device)
    return z.gather(0, keys.argsort(dim=0))


class FactorVAE(Objective):
    name = "factorvae"
    extras = ("tc", "discriminator")
    val_extras = ("tc",)

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.discriminator = Discriminator(cfg.latent, cfg.factor_hidden).to(self.device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.factor_lr, betas=DISCRIMINATOR_BETAS)
        self._codes: torch.Tensor | None = None

    def total_correlation(self, z: torch.Tensor) -> torch.Tensor:
        """E[logit D(z)] with D held fixed (gradients reach z only), float32."""
        params = list(self.discriminator.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.autocast(self.device.type, enabled=False):
                return self.discriminator(z.float()).mean()
        finally:
            for p in params:
                p.requires_grad_(True)

    def train_discriminator(self, codes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One Adam step of D on codes (N, L) against their permutation; returns the (detached) BCE loss."""
        codes = codes.detach().float()
        both = torch.cat([codes, permute_dims(codes, generator)])
        target = torch.cat([torch.ones(len(codes), device=codes.device), torch.zeros(len(codes), device=codes.device)])
        with torch.autocast(self.device.type, enabled=False):
            loss = F.binary_cross_entropy_with_logits(self.discriminator(both), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(self.ctx, self.discriminator.parameters())
        self.optimizer.step()
        return loss.detach()

    def _loss(self, model, images, noise, *, step):
        recon, mu, logvar = self._forward(model, images, noise)
        terms = self._vae_loss(images, recon, mu, logvar, beta=1.0)
        z = _sample(mu, logvar, noise)
        tc = self.total_correlation(z)
        terms.loss = terms.loss + self.cfg.factor_gamma * tc
        terms.extra = {"tc": tc.detach()}
        self._codes = z.detach()
        return terms, recon

    def _after_step(self, terms, generator):
        terms.extra["discriminator"] = self.train_discriminator(self._codes, generator)
        self._codes = None

    def _evaluate(self, images, recon, mu, logvar, noise, *, dataset_size):
        terms = self._vae_loss(images, recon, mu, logvar, beta=1.0)
        terms.extra = {"tc": self.total_correlation(_sample(mu, logvar, noise))}
        return terms

    def _val_loss(self, recon, kl, extras, step):
        return recon + kl + self.cfg.factor_gamma * extras["tc"]

    def record(self):
        cfg = self.cfg
        return {**super().record(), "beta": 1.0, "capacity": None, "weights": {"kl": 1.0, "tc": cfg.factor_gamma},
                "discriminator": {"layers": DISCRIMINATOR_LAYERS, "hidden": cfg.factor_hidden, "optimizer": "Adam",
                                  "lr": cfg.factor_lr, "betas": list(DISCRIMINATOR_BETAS)}}  # fmt: skip

    def _state_dict(self):
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def _load_state_dict(self, state):
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


# ------------------------------------------------------------------------------------------ Ada-GVAE pairs
def ada_gvae_aggregate(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posteriors of P pairs, (2P, L): rows 0..P-1 the first slices, P..2P-1 their partners.

    Returns (mu, logvar) with the shared units of each pair averaged in both rows, float32 (2P, L), and the
    shared mask (P, L) bool: δ_j = KL(q(z_j|x1) || q(z_j|x2)) < ½(max_j δ + min_j δ).
    """
    mu1, mu2 = mu.float().chunk(2)
    logvar1, logvar2 = logvar.float().chunk(2)
    var1, var2 = logvar1.exp(), logvar2.exp()
    delta = 0.5 * (var1 / var2 + (mu2 - mu1).square() / var2 - 1.0 + logvar2 - logvar1)  # (P, L)
    tau = 0.5 * (delta.amax(1, keepdim=True) + delta.amin(1, keepdim=True))
    shared = (delta < tau).detach()
    mean_mu, mean_logvar = 0.5 * (mu1 + mu2), torch.log(0.5 * (var1 + var2))
    mu_out = torch.cat([torch.where(shared, mean_mu, mu1), torch.where(shared, mean_mu, mu2)])
    logvar_out = torch.cat([torch.where(shared, mean_logvar, logvar1), torch.where(shared, mean_logvar, logvar2)])
    return mu_out, logvar_out, shared


def slice_groups(records: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """Indices of ``records`` grouped by patient, each group ordered by slice level (z of position_mm,
    else instance number, else cache order); int64 arrays, patients in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record["patient"], []).append(index)

    def level(index: int) -> tuple[float, float, int]:
        record = records[index]
        position = record.get("position_mm")
        return (position[2] if position else math.inf, record.get("instance_number") or 0, index)

    return [np.array(sorted(members, key=level), dtype=np.int64) for members in groups.values()]


class Pairs(Objective):
    name = "pairs"
    images_per_item = 2
    extras = ("shared_units",)

    def __init__(self, cfg, *, train_records, **kwargs):
        super().__init__(cfg, train_records=train_records, **kwargs)
        groups = [group for group in slice_groups(train_records) if len(group) > 1]
        self.single_slice_patients = len({r["patient"] for r in train_records}) - len(groups)
        # one entry per pairable slice (position p): its index, its rank by level in its patient's group,
        # the group's size and the position where the group starts
        items, rank, size, start = [], [], [], []
        offset = 0
        for group in groups:
            start.append(np.full(len(group), offset))
            offset += len(group)
            items.append(group)
            rank.append(np.arange(len(group)))
            size.append(np.full(len(group), len(group)))
        join = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
        self.items, self.rank, self.size, self.start = join(items), join(rank), join(size), join(start)
        self.items_per_epoch = len(self.items)
        self._shared: torch.Tensor | None = None

    def epoch_order(self, epoch):
        anchors = super().epoch_order(epoch).numpy()
        draw = torch.rand(self.items_per_epoch, generator=torch.Generator().manual_seed(
            derived_seed(self.cfg.seed, "pairs", epoch))).numpy()  # fmt: skip
        rank, size = self.rank, self.size
        if self.cfg.pair_adjacent:  # the slice above or below, at random; the only neighbour at the ends
            step = np.where(draw < 0.5, -1, 1)
            step = np.where((rank + step < 0) | (rank + step >= size), -step, step)
            partner_rank = rank + step
        else:  # any other slice of the patient
            partner_rank = (rank + 1 + np.floor(draw * (size - 1)).astype(np.int64)) % size
        partners = self.items[self.start + partner_rank]
        return torch.from_numpy(np.stack([self.items[anchors], partners[anchors]], axis=1))

    def _aggregate(self, mu, logvar):
        mu, logvar, self._shared = ada_gvae_aggregate(mu, logvar)
        return mu, logvar

    def _loss(self, model, images, noise, *, step):
        recon, mu, logvar = self._forward(model, images, noise, posterior=self._aggregate)
        terms = self._vae_loss(images, recon, mu, logvar, beta=self.cfg.beta)
        terms.extra = {"shared_units": self._shared.float().sum(1).mean()}
        return terms, recon

    def record(self):
        return {**super().record(), "capacity": None,
                "pairing": {"adjacent": self.cfg.pair_adjacent, "pairs_per_epoch": self.items_per_epoch,
                            "single_slice_patients_skipped": self.single_slice_patients},
                "aggregation": "Ada-GVAE: units with KL(q1||q2) below (max+min)/2 share N(mean mu, mean variance)"}


def make_objective(cfg: Any, *, train_records: Sequence[dict[str, Any]], device: torch.device,
                   autocast: Callable[[], Any] = nullcontext, ctx: ddp.Dist = ddp.Dist(),
                   binding: Binding | None = None) -> Objective:  # fmt: skip
    """The objective ``cfg.objective`` names; ``train_records`` are the cache records of the training slices
    in training-row order; ``binding`` adds the bound units' terms. Raises ValueError for an unknown name."""
    classes = {"betavae": Objective, "tcvae": TCVAE, "factorvae": FactorVAE, "pairs": Pairs}
    if cfg.objective not in classes:
        raise ValueError(f"unknown objective {cfg.objective!r} (choose from {', '.join(OBJECTIVES)})")
    return classes[cfg.objective](cfg, train_records=train_records, device=device, autocast=autocast, ctx=ctx,
                                  binding=binding)
