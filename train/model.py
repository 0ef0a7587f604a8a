"""The β-VAE: configuration, modules and loss.

Architecture (the seed study's, sizes configurable)
    encoder, 10 convolutions: 5 stages of [conv 3x3 stride 1 -> conv 4x4 stride 2], each followed by
        BatchNorm + LeakyReLU; channels width, 2w, 4w, 8w, 8w (doubling, capped at 8·width); the image
        shrinks S -> S/32; flatten -> Linear -> 2L values split into (mu, logvar).
    decoder, 7 convolutions: Linear -> LeakyReLU -> (8w, S/32, S/32); 5 upsampling stages ×2 with
        BatchNorm + LeakyReLU back up to S; a conv 3x3 with BatchNorm + LeakyReLU and a final conv 3x3 to
        one channel (``to_image``, float32 even under autocast); sigmoid, so images are in [0, 1] (the
        model units of ctgen.images.preprocess). ``upsample`` picks the stage (C_in -> C_out channels):
            transposed  ConvTranspose2d(4, stride 2, padding 1), 16·C_in·C_out weights (the default; version
                        1 and 2 models). Its kernel overlaps unevenly, a known source of period-2 checkerboards
                        (Odena et al. 2016).
            resize      nearest-neighbour ×2, then conv 3x3: 9·C_in·C_out weights, no checkerboard by
                        construction (ONNX Resize).
            subpixel    conv 3x3 to 4·C_out, then PixelShuffle(2) (Shi et al. 2016): 36·C_in·C_out weights,
                        ICNR-initialised (Aitken et al. 2017: the 4 sub-pixel kernels start equal, so at
                        initialisation it is conv then nearest ×2, free of checkerboards; ONNX DepthToSpace).
    image_size must be divisible by 32 (64, 128, 256, ...).

Loss (see ``vae_loss``), per batch of N images of S×S pixels in [0, 1]:
    recon = (1/N) Σ_images Σ_pixels (x − x̂)²                  summed over pixels, batch mean ("l2", default)
    recon = (1/N) Σ_images Σ_pixels |x − x̂|                   the same with --recon l1
    KL    = (1/N) Σ_images Σ_units ½(μ² + σ² − 1 − log σ²)    summed over latent units, batch mean
    loss  = recon + β·KL                                      (β-VAE, Higgins et al. 2017)
    loss  = recon + γ·|KL − C|, C = C_max·min(1, step/C_steps) (capacity annealing, Burgess et al. 2018)
Summed squared error is the negative log-likelihood of a Gaussian decoder with σ² = ½ (in window units,
up to a constant), so β = 1 is the plain ELBO of that model. Because the recon term grows with the number
of pixels, the same β weighs the KL less at larger image sizes: a codebase that averages the squared error
over pixels with weight β' is equivalent to β = β'·S² here; Higgins' normalised β is β·L/S².
The image terms that any objective can add (MS-SSIM, focal frequency, patch adversarial) live in
train.losses.
Per-unit KL (the KL of each latent unit, averaged over the data) is what the training loop tracks; a unit is
*active* when its KL exceeds ACTIVE_UNIT_KL = 0.01 nats.

Everything in ``encode``/``decode`` is static in shape and free of data-dependent control flow, so both
export to ONNX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any

import torch
from torch import nn

__all__ = ["VAEConfig", "BetaVAE", "LossTerms", "vae_loss", "kl_per_unit", "ACTIVE_UNIT_KL", "RECONSTRUCTION_LOSS",
           "RECONSTRUCTION_LOSSES"]

from ctgen.defaults import ACTIVE_UNIT_KL  # noqa: E402 - nats; a unit with mean KL above this carries information
RECONSTRUCTION_LOSSES = {  # vae_loss(reconstruction=...): what the checkpoint and the card say about it
    "l2": "squared error summed over pixels (model units, [0, 1]) per image, mean over the batch",
    "l1": "absolute error summed over pixels (model units, [0, 1]) per image, mean over the batch",
}
RECONSTRUCTION_LOSS = RECONSTRUCTION_LOSSES["l2"]
STAGES = 5  # each halves the image: S -> S/32
UPSAMPLE = ("transposed", "resize", "subpixel")


@dataclass
class VAEConfig:
    image_size: int = 256  # S: images are (1, S, S); divisible by 32
    latent_size: int = 50  # L
    width: int = 32  # channels of the first stage; later stages double, capped at 8·width
    in_channels: int = 1
    leaky_slope: float = 0.2
    upsample: str = "transposed"  # decoder stages: one of UPSAMPLE (checkpoints without it are transposed)

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.upsample not in UPSAMPLE:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE)}, got {self.upsample!r}")
        if self.latent_size < 1 or self.width < 1 or self.in_channels < 1:
            raise ValueError("latent_size, width and in_channels must be positive")

    @property
    def channels(self) -> list[int]:
        """Encoder stage channels, e.g. width 32 -> [32, 64, 128, 256, 256]."""
        return [min(self.width * 2**i, 8 * self.width) for i in range(STAGES)]

    @property
    def bottleneck(self) -> tuple[int, int, int]:
        """(C, S/32, S/32): the feature map between the convolutions and the linear layer."""
        side = self.image_size // 2**STAGES
        return (self.channels[-1], side, side)


def _conv_block(conv: nn.Module, channels: int, slope: float) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(slope))


def icnr_(weight: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """ICNR (Aitken et al. 2017), in place: a conv weight (C·r², C_in, k, k) feeding PixelShuffle(r) gets
    r² equal copies of a Kaiming-initialised (C, C_in, k, k) kernel, so the shuffle starts as nearest ×r."""
    out_channels = weight.shape[0] // scale**2
    kernel = torch.empty(out_channels, *weight.shape[1:])
    nn.init.kaiming_uniform_(kernel, a=5**0.5)  # nn.Conv2d's own initialisation
    with torch.no_grad():
        weight.copy_(kernel.repeat_interleave(scale**2, dim=0))  # channel c·r² + k -> output c, sub-pixel k
    return weight


def _upsample_stage(kind: str, in_ch: int, out_ch: int) -> list[nn.Module]:
    """The modules of one ×2 decoder stage before its BatchNorm (module docstring)."""
    if kind == "transposed":
        return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False)]
    if kind == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)]
    conv = nn.Conv2d(in_ch, 4 * out_ch, 3, 1, 1, bias=False)
    icnr_(conv.weight)
    return [conv, nn.PixelShuffle(2)]


@contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise by the batch as in training but leave their running statistics
    as they were (momentum 0), until the block ends."""
    layers = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    kept = [(layer.momentum, None if layer.num_batches_tracked is None else layer.num_batches_tracked.clone())
            for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, count) in zip(layers, kept):
            layer.momentum = momentum
            if count is not None:
                layer.num_batches_tracked.copy_(count)


class BetaVAE(nn.Module):
    """β-VAE for (N, 1, S, S) images in [0, 1]. Build with ``BetaVAE(VAEConfig(...))``."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or VAEConfig()
        slope, chans = cfg.leaky_slope, cfg.channels
        blocks: list[nn.Module] = []
        in_ch = cfg.in_channels
        for out_ch in chans:
            # conv 3x3 keeps the size, conv 4x4 stride 2 halves it
            blocks.append(_conv_block(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), out_ch, slope))
            blocks.append(_conv_block(nn.Conv2d(out_ch, out_ch, 4, 2, 1, bias=False), out_ch, slope))
            in_ch = out_ch
        self.encoder = nn.Sequential(*blocks)  # (N, 1, S, S) -> (N, 8w, S/32, S/32)
        flat = cfg.bottleneck[0] * cfg.bottleneck[1] * cfg.bottleneck[2]
        self.to_latent = nn.Linear(flat, 2 * cfg.latent_size)  # -> (N, 2L)

        self.from_latent = nn.Sequential(nn.Linear(cfg.latent_size, flat), nn.LeakyReLU(slope))
        up_channels = chans[::-1][1:] + [chans[0]]  # width 32: [256, 128, 64, 32, 32]
        ups: list[nn.Module] = []
        in_ch = chans[-1]
        for out_ch in up_channels:
            stage = _upsample_stage(cfg.upsample, in_ch, out_ch)  # (N, in, s, s) -> (N, out, 2s, 2s)
            ups.append(nn.Sequential(*stage, nn.BatchNorm2d(out_ch), nn.LeakyReLU(slope)))
            in_ch = out_ch
        ups.append(_conv_block(nn.Conv2d(in_ch, in_ch, 3, 1, 1, bias=False), in_ch, slope))
        self.decoder = nn.Sequential(*ups)  # (N, 8w, S/32, S/32) -> (N, w, S, S)
        self.to_image = nn.Conv2d(in_ch, cfg.in_channels, 3, 1, 1)  # -> (N, 1, S, S) logits

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (N, 1, S, S) in [0, 1] -> (mu, logvar), each (N, L)."""
        features = self.encoder(images)  # (N, 8w, S/32, S/32)
        stats = self.to_latent(features.flatten(1))  # (N, 2L)
        mu, logvar = stats.chunk(2, dim=1)  # (N, L) each
        return mu, logvar

    def encode_frozen(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` with the encoder's weights taken as constants: gradients reach ``images`` (and what made
        them), not the encoder."""
        from torch.func import functional_call

        def frozen(module: nn.Module, value: torch.Tensor) -> torch.Tensor:
            return functional_call(module, {name: weight.detach() for name, weight in module.named_parameters()},
                                   (value,))

        stats = frozen(self.to_latent, frozen(self.encoder, images).flatten(1))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, L) latent -> (N, 1, S, S) images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        c, h, w = self.config.bottleneck
        features = self.from_latent(z).reshape(-1, c, h, w)  # (N, 8w, S/32, S/32)
        features = self.decoder(features)  # (N, w, S, S)
        # the output layer runs in float32 even under bf16 autocast: bf16 logits would quantise the image
        # to ~0.005 of the window (~1.5 HU), coarser than grey/white matter contrast
        # (a model converted with .half() for fp16 export keeps its own dtype)
        with torch.autocast(features.device.type, enabled=False):
            return self.to_image(features.to(self.to_image.weight.dtype))  # (N, 1, S, S)

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        posterior: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        cycle: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample z = mu + σ·ε, decode.

        ε is ``noise`` (N, L) when given (keeps torch.compile graphs whole), else drawn from ``generator``
        (or the global RNG). ``posterior`` maps the encoder's (mu, logvar) to the ones sampled from (the
        pairs objective averages shared units there; it runs inside forward so DDP sees one call).
        ``cycle`` (``train.binding.Cycle``, --cycle-weight): latents made from z are decoded and encoded again,
        and the encoder's means go to ``cycle.read``; with BatchNorm's running statistics left as they were, so
        that the generated images do not shift what the exported model normalises by.
        Returns (recon (N, 1, S, S) in [0, 1], mu (N, L), logvar (N, L)), mu and logvar as sampled from.
        """
        mu, logvar = self.encode(images)
        if posterior is not None:
            mu, logvar = posterior(mu, logvar)
        if noise is not None:
            eps = noise.float()
        elif generator is None:
            eps = torch.randn(mu.shape, device=mu.device, dtype=torch.float32)
        else:
            eps = torch.randn(mu.shape, generator=generator, device=generator.device, dtype=torch.float32)
            eps = eps.to(mu.device)
        z = mu.float() + torch.exp(0.5 * logvar.float()) * eps
        recon = self.decode(z)
        if cycle is not None:
            with running_statistics_kept(self):
                generated = self.decode(cycle.latents(z))
                cycle.read((self.encode_frozen(generated) if cycle.frozen_reader else self.encode(generated))[0])
        return recon, mu, logvar

    @classmethod
    def from_checkpoint(cls, checkpoint: str | PathLike | dict[str, Any], map_location: Any = "cpu") -> BetaVAE:
        """Rebuild a model from a checkpoint path or an already loaded checkpoint dict; eval mode."""
        if not isinstance(checkpoint, dict):
            checkpoint = torch.load(checkpoint, map_location=map_location, weights_only=True)
        model = cls(VAEConfig(**checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
        return model.eval()

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


@dataclass
class LossTerms:
    loss: torch.Tensor  # scalar, what is optimised
    recon: torch.Tensor  # scalar, summed squared (or absolute: l1) error per image, batch mean
    kl: torch.Tensor  # scalar, KL summed over units, batch mean
    kl_units: torch.Tensor  # (L,), per-unit KL, batch mean
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # an objective's own scalar terms (TC, MI, ...)


def kl_per_unit(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image and unit, (N, L) nats, computed in float32."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def vae_loss(
    images: torch.Tensor,
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float = 1.0,
    capacity: float | None = None,
    gamma: float = 100.0,
    reconstruction: str = "l2",
) -> LossTerms:
    """The loss of the module docstring. ``capacity`` (nats, the current C) switches to γ·|KL − C|;
    ``reconstruction`` is "l2" or "l1" (RECONSTRUCTION_LOSSES). Raises ValueError for another name."""
    if reconstruction not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"unknown reconstruction loss {reconstruction!r} (choose from {', '.join(RECONSTRUCTION_LOSSES)})")
    error = recon.float() - images.float()
    error = error.square() if reconstruction == "l2" else error.abs()
    recon_term = error.flatten(1).sum(1).mean()
    kl_units = kl_per_unit(mu, logvar).mean(0)
    kl = kl_units.sum()
    if capacity is None:
        loss = recon_term + beta * kl
    else:
        loss = recon_term + gamma * (kl - capacity).abs()
    return LossTerms(loss=loss, recon=recon_term, kl=kl, kl_units=kl_units)
