"""``TrainConfig``: every option of a training run, saved in its checkpoint and rebuilt from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctgen.errors import InputError
from ctgen.images.preprocess import CT_MAP, WINDOW_DEFAULT, Grid, HUMap
from train.data import BRAIN_FRACTION_MIN
from train.model import VAEConfig

__all__ = ["TrainConfig", "FIELD_OF_VIEW_MM", "RESUMABLE"]

FIELD_OF_VIEW_MM = 240.0  # default grid: 240 mm across, whatever the image size
HU_MAPS = {"window": HUMap.window(*WINDOW_DEFAULT), "ct": CT_MAP}  # --hu-map
# options a --resume takes from the command line; the rest come from the checkpoint (--data only when given)
RESUMABLE = ("out", "epochs", "device", "precision", "compile", "quiet", "workers", "tensorboard")


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)
    out: str = "runs/default"
    cache: str = "cache"
    image_size: int = 128
    spacing_mm: float | None = None  # None: FIELD_OF_VIEW_MM / image_size
    hu_map: str = "ct"  # "ct": ctgen.images.preprocess.CT_MAP, the whole CT range; "window": HU -50..250 clipped (version-1)
    latent: int = 50
    width: int = 32
    upsample: str = "transposed"  # decoder stages: transposed | resize | subpixel (train.model)
    objective: str = "betavae"  # one of train.objectives.OBJECTIVES
    beta: float = 4.0  # KL weight of betavae and pairs
    capacity_max: float | None = None  # nats; set to use recon + gamma·|KL - C| (betavae)
    capacity_steps: int = 10000
    gamma: float = 100.0
    tc_alpha: float = 1.0  # tcvae: weights of index-code MI, total correlation, dimension-wise KL
    tc_beta: float = 6.0
    tc_gamma: float = 1.0
    factor_gamma: float = 10.0  # factorvae: weight of the discriminator's TC estimate
    factor_hidden: int = 1000  # factorvae: units per discriminator layer
    factor_lr: float = 1e-4  # factorvae: discriminator learning rate
    pair_adjacent: bool = False  # pairs: partner is a neighbouring slice instead of any slice of the patient
    # the reconstruction term and the image terms every objective can add (table: train.losses)
    recon: str = "l2"  # "l2": summed squared error (version 1 and 2); "l1": summed absolute error
    ssim_weight: float = 0.0  # weight of S²·(1 − MS-SSIM)
    freq_weight: float = 0.0  # weight of the focal frequency loss
    adv_weight: float = 0.0  # weight of S²·(−D(x̂)), the PatchGAN's hinge generator term; 0: no discriminator
    adv_start: int = 0  # step at which the discriminator and its term switch on (warm-up)
    # bound units (train.binding): the first units tied to measured factors; "" binds none
    bind: str = ""  # comma list of ctgen.factors names (or factors.csv columns with bind_from), or "auto"
    bind_weight: float = 1.0  # w of the likelihood w·Σ_k (μ_k − y_k)²/(2σ²), σ = train.binding.BIND_SIGMA
    free_weight: float = 10.0  # weight of the term that keeps the free units off the bound factors
    free_term: str = "covariance"  # that term: covariance | adversary (train.binding.FREE_TERMS)
    bind_fraction: float = 1.0  # share of training patients whose labels are used (seeded)
    cycle_weight: float = 0.0  # weight of the bound units' latent cycle (train.binding.Cycle); 0: off
    cycle_reader: str = "joint"  # who learns from the cycle: joint (decoder and encoder) | frozen (the decoder)
    bind_from: str | None = None  # a phantom's factors.csv instead of the measured factors (research runs only)
    epochs: int = 20
    batch_size: int = 64  # global, in images: split across torchrun processes
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    val_fraction: float = 0.2
    split_by: str = "auto"  # how slices group into patients for the split: ctgen.io.scan.SPLIT_BY (kept on --resume)
    filter_brain: bool = False
    brain_threshold: float = BRAIN_FRACTION_MIN
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    resume: bool = False
    force: bool = False
    quiet: bool = False
    tensorboard: bool = True

    def check_losses(self) -> None:
        """Raises InputError for an unknown --recon or a negative loss weight or --adv-start."""
        from train.losses import RECON_LOSSES

        if self.recon not in RECON_LOSSES:
            raise InputError(None, f"--recon must be one of {', '.join(RECON_LOSSES)}, not {self.recon!r}")
        for name in ("ssim_weight", "freq_weight", "adv_weight", "adv_start", "bind_weight", "free_weight",
                     "cycle_weight"):
            if not getattr(self, name) >= 0:
                raise InputError(None, f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if not 0.0 < self.bind_fraction <= 1.0:
            raise InputError(None, f"--bind-fraction must be in (0, 1], not {self.bind_fraction}")
        if self.free_term not in ("covariance", "adversary"):
            raise InputError(None, f"--free-term must be covariance or adversary, not {self.free_term!r}")
        if self.bind_from and not self.bind:
            raise InputError(None, "--bind-from needs --bind (the factors.csv columns to bind, or auto)")
        if self.cycle_reader not in ("joint", "frozen"):
            raise InputError(None, f"--cycle-reader must be joint or frozen, not {self.cycle_reader!r}")
        if self.cycle_weight > 0 and not self.bind:
            raise InputError(None, "--cycle-weight needs --bind (the cycle reads the bound units back)")

    @property
    def grid(self) -> Grid:
        spacing = self.spacing_mm if self.spacing_mm is not None else FIELD_OF_VIEW_MM / self.image_size
        if self.hu_map not in HU_MAPS:
            raise InputError(None, f"--hu-map must be one of {', '.join(HU_MAPS)}, not {self.hu_map!r}")
        return Grid(size=self.image_size, spacing_mm=spacing, hu_map=HU_MAPS[self.hu_map])

    @property
    def model_config(self) -> VAEConfig:
        return VAEConfig(image_size=self.image_size, latent_size=self.latent, width=self.width, upsample=self.upsample)
