"""Image terms added to any objective's loss: MS-SSIM, focal frequency loss and a patch adversarial loss.

Every term is per image, averaged over the batch, and multiplied by the number of pixels S², so a weight
reads like the per-pixel reconstruction error it competes with (train.model sums that error over pixels):

    option          default  term in the loss (images in [0, 1])
    --recon         l2       l2: Σ_pixels (x − x̂)²; l1: Σ_pixels |x − x̂| (train.model.vae_loss)
    --ssim-weight   0        w·S²·(1 − MS-SSIM(x, x̂)); Wang et al. 2003: Gaussian window 11 px, σ 1.5,
                             C1 = 0.01², C2 = 0.03², as many of the 5 scales (weights 0.0448, 0.2856,
                             0.3001, 0.2363, 0.1333, renormalised) as keep the coarsest side ≥ 11 px:
                             3 at 64², 4 at 128², 5 at 256²
    --freq-weight   0        w·Σ_freq m·|F(x̂) − F(x)|², the focal frequency loss (Jiang et al. 2021), F the
                             orthonormal 2-D DFT (so with m = 1 it is Σ_pixels (x − x̂)², Parseval),
                             m = |F(x̂) − F(x)| / its maximum over the image's frequencies, no gradient (α = 1)
    --adv-weight    0        w·S²·(−mean over patches of D(x̂)), D a PatchGAN (Isola et al. 2017) trained from
    --adv-start     0        scratch with the hinge loss mean(relu(1 − D(x))) + mean(relu(1 + D(x̂))): 3
                             conv 4x4/2 (width, 2·width, 4·width; LeakyReLU 0.2, no normalisation) and a conv
                             4x4/1 to one logit per patch (~46 px); Adam (lr of --lr, betas 0.5/0.9) after each
                             model step. Both start at step --adv-start (the warm-up); D and its optimizer are
                             saved in the checkpoint, so --resume is exact.
    --beta          4        the KL weight (train.model, train.objectives)

Validation adds the MS-SSIM and frequency terms to val_loss (with their weights); the adversarial term
depends on a moving discriminator and stays out of model selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train import ddp

__all__ = ["RECON_LOSSES", "ImageLoss", "ImageTerms", "PatchDiscriminator", "focal_frequency_loss", "ms_ssim",
           "ms_ssim_scales"]  # fmt: skip

RECON_LOSSES = ("l2", "l1")
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # for a data range of 1
PATCH_BETAS = (0.5, 0.9)


def ms_ssim_scales(size: int) -> int:
    """How many MS-SSIM scales fit an image of ``size`` px: the coarsest keeps at least one whole window."""
    scales = 1
    while scales < len(SSIM_SCALE_WEIGHTS) and size // 2**scales >= SSIM_WINDOW:
        scales += 1
    return scales


def _gaussian_window(device: torch.device) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - (SSIM_WINDOW - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * SSIM_SIGMA**2))
    return weights / weights.sum()  # (11,)


def _blur(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' borders: (N, 1, H, W) -> (N, 1, H − 10, W − 10)."""
    blurred = F.conv2d(images, window.view(1, 1, 1, -1))
    return F.conv2d(blurred, window.view(1, 1, -1, 1))


def ms_ssim(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image, float32 (N,), of two float (N, 1, S, S) batches in [0, 1] (data range 1), at
    ``ms_ssim_scales(S)`` scales. 1 for identical images; differentiable (contrast terms clamped at 1e-6)."""
    first, second = first.float(), second.float()
    window = _gaussian_window(first.device)
    scales = ms_ssim_scales(min(first.shape[-2:]))
    weights = torch.tensor(SSIM_SCALE_WEIGHTS[:scales], device=first.device)
    weights = weights / weights.sum()
    result = torch.ones(first.shape[0], device=first.device)
    for scale in range(scales):
        if scale:
            first, second = F.avg_pool2d(first, 2), F.avg_pool2d(second, 2)
        mu1, mu2 = _blur(first, window), _blur(second, window)
        var1 = _blur(first * first, window) - mu1.square()
        var2 = _blur(second * second, window) - mu2.square()
        covar = _blur(first * second, window) - mu1 * mu2
        contrast = ((2 * covar + SSIM_C2) / (var1 + var2 + SSIM_C2)).flatten(1).mean(1)
        if scale == scales - 1:
            luminance = (2 * mu1 * mu2 + SSIM_C1) / (mu1.square() + mu2.square() + SSIM_C1)
            contrast = (luminance * (2 * covar + SSIM_C2) / (var1 + var2 + SSIM_C2)).flatten(1).mean(1)
        result = result * contrast.clamp(min=1e-6) ** weights[scale]
    return result


def focal_frequency_loss(images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Σ_freq m·|F(x̂) − F(x)|² per image, float32 (N,), for float (N, 1, S, S) batches (module docstring)."""
    difference = torch.fft.fft2(recon.float(), norm="ortho") - torch.fft.fft2(images.float(), norm="ortho")
    power = difference.real.square() + difference.imag.square()  # (N, 1, S, S)
    magnitude = power.detach().sqrt().flatten(1)
    focus = magnitude / magnitude.amax(1, keepdim=True).clamp(min=1e-12)
    return (focus * power.flatten(1)).sum(1)


class PatchDiscriminator(nn.Module):
    """(N, 1, S, S) images in [0, 1] -> (N, 1, S/8 − 1, S/8 − 1) logits, one per ~46 px patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [1, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]  # halves the image
        self.net = nn.Sequential(*layers, nn.Conv2d(chans[-1], 1, 4, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@dataclass
class ImageTerms:
    loss: torch.Tensor  # scalar: the weighted sum of the image terms, to add to the objective's loss
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted, detached, for the log


class ImageLoss:
    """The image terms of one training run (``cfg``: a TrainConfig); holds the patch discriminator."""

    def __init__(self, cfg: Any, *, device: torch.device, ctx: ddp.Dist = ddp.Dist()):
        self.cfg, self.device, self.ctx = cfg, device, ctx
        self.pixels = cfg.image_size**2
        self.discriminator: PatchDiscriminator | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        if cfg.adv_weight > 0:
            self.discriminator = PatchDiscriminator(cfg.width).to(device)
            self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=PATCH_BETAS)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Training extras this run logs."""
        return self.val_names + (("adv", "adv_discriminator") if self.discriminator is not None else ())

    @property
    def val_names(self) -> tuple[str, ...]:
        cfg = self.cfg
        return (("ms_ssim",) if cfg.ssim_weight > 0 else ()) + (("freq",) if cfg.freq_weight > 0 else ())

    def adversarial(self, step: int | None) -> bool:
        return self.discriminator is not None and step is not None and step >= self.cfg.adv_start

    def __call__(self, images: torch.Tensor, recon: torch.Tensor, step: int | None = None) -> ImageTerms:
        """The weighted terms for (N, 1, S, S) batches; ``step`` None (validation) leaves out the adversarial."""
        cfg = self.cfg
        total = torch.zeros((), device=images.device)
        extra: dict[str, torch.Tensor] = {}
        if cfg.ssim_weight > 0:
            similarity = ms_ssim(images, recon).mean()
            total = total + cfg.ssim_weight * self.pixels * (1 - similarity)
            extra["ms_ssim"] = similarity.detach()
        if cfg.freq_weight > 0:
            frequency = focal_frequency_loss(images, recon).mean()
            total = total + cfg.freq_weight * frequency
            extra["freq"] = frequency.detach()
        if self.discriminator is not None and step is not None:
            adversarial = torch.zeros((), device=images.device)
            if self.adversarial(step):
                adversarial = -self._judge(recon).mean()
                total = total + cfg.adv_weight * self.pixels * adversarial
                self._pending = (images.detach(), recon.detach())
            extra["adv"] = adversarial.detach()
        return ImageTerms(total, extra)

    def _judge(self, recon: torch.Tensor) -> torch.Tensor:
        """D(x̂) with D held fixed: gradients reach the model only, float32."""
        assert self.discriminator is not None
        params = list(self.discriminator.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.autocast(self.device.type, enabled=False):
                return self.discriminator(recon.float())
        finally:
            for p in params:
                p.requires_grad_(True)

    def after_step(self, extra: dict[str, torch.Tensor]) -> None:
        """One hinge-loss Adam step of D on the last training batch (when adversarial); logs its loss."""
        if self.discriminator is None:
            return
        if self._pending is None:
            extra["adv_discriminator"] = torch.zeros((), device=self.device)
            return
        images, recon = self._pending
        self._pending = None
        assert self.optimizer is not None
        with torch.autocast(self.device.type, enabled=False):
            real, fake = self.discriminator(images.float()), self.discriminator(recon.float())
            loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(self.ctx, self.discriminator.parameters())
        self.optimizer.step()
        extra["adv_discriminator"] = loss.detach()

    def val_loss(self, extras: dict[str, float]) -> float:
        """The weighted validation terms from the logged ``extras`` (ms_ssim, freq)."""
        cfg, total = self.cfg, 0.0
        if cfg.ssim_weight > 0:
            total += cfg.ssim_weight * self.pixels * (1 - extras["ms_ssim"])
        if cfg.freq_weight > 0:
            total += cfg.freq_weight * extras["freq"]
        return total

    def record(self) -> dict[str, Any]:
        """The recipe for the checkpoint's loss record and the model card."""
        cfg = self.cfg
        record: dict[str, Any] = {"reconstruction": cfg.recon, "kl_weight_beta": cfg.beta,
                                  "scale": "each term per image, batch mean, times S² pixels (train.losses)"}
        record["ms_ssim"] = None if cfg.ssim_weight <= 0 else {
            "weight": cfg.ssim_weight, "scales": ms_ssim_scales(cfg.image_size), "window": SSIM_WINDOW,
            "sigma": SSIM_SIGMA}  # fmt: skip
        record["focal_frequency"] = None if cfg.freq_weight <= 0 else {"weight": cfg.freq_weight, "alpha": 1.0}
        record["adversarial"] = None if self.discriminator is None else {
            "weight": cfg.adv_weight, "start_step": cfg.adv_start, "loss": "hinge",
            "discriminator": f"PatchGAN, 3 conv4x4/2 + conv4x4/1, width {cfg.width}, no normalisation",
            "optimizer": "Adam", "lr": cfg.lr, "betas": list(PATCH_BETAS)}  # fmt: skip
        return record

    def state_dict(self) -> dict[str, Any]:
        if self.discriminator is None:
            return {}
        assert self.optimizer is not None
        return {"patch_discriminator": self.discriminator.state_dict(), "patch_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Raises KeyError when the run has a discriminator and ``state`` lacks it."""
        if self.discriminator is None:
            return
        assert self.optimizer is not None
        self.discriminator.load_state_dict((state or {})["patch_discriminator"])
        self.optimizer.load_state_dict((state or {})["patch_optimizer"])

