"""``python -m train --data DIR [DIR ...] --out runs/x [options]`` (also under ``torchrun --nproc_per_node=N``).

Progress and messages go to stderr; when the run finishes, stdout names the run folder and the export command
to run next. Errors print one line and exit 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command as the user could type it again, torchrun included."""
    prefix = "python -m"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        prefix = f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', os.environ['WORLD_SIZE'])} -m"
    return " ".join([prefix, module, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])


def add_arguments(parser: argparse.ArgumentParser, *, grid_types: bool = False) -> None:
    """The ``python -m train`` options; ``grid_types`` makes --latent/--beta comma lists (for sweeps)."""
    from ctgen.io.scan import SPLIT_BY
    from train.losses import RECON_LOSSES
    from train.model import UPSAMPLE
    from train.objectives import OBJECTIVES
    from train.train import FIELD_OF_VIEW_MM, TrainConfig

    default = TrainConfig()
    add = parser.add_argument
    add("--data", nargs="+", metavar="DIR", default=[], help="DICOM folders or files (searched recursively)")
    add("--out", required=True, help="run folder")
    add("--cache", default=default.cache, help="preprocessed slice cache root (shared between runs)")
    add("--image-size", type=int, default=default.image_size, help="model image size S (multiple of 32)")
    add("--spacing-mm", type=float, default=None, help=f"model pixel spacing (default {FIELD_OF_VIEW_MM:g} mm / S)")
    add("--hu-map", choices=("ct", "window"), default=default.hu_map,
        help="HU -> model units: 'ct' (default) keeps -1024..3072 HU (ctgen.images.preprocess.CT_MAP); 'window' clips to -50..250")
    if grid_types:
        add("--latent", default=str(default.latent), help="latent sizes, comma separated")
        add("--beta", default=str(default.beta), help="betas, comma separated")
    else:
        add("--latent", type=int, default=default.latent, help="latent size L")
        add("--beta", type=float, default=default.beta, help="KL weight of betavae and pairs (see train.model)")
    add("--width", type=int, default=default.width, help="channels of the first conv stage")
    add("--upsample", choices=UPSAMPLE, default=default.upsample,
        help="decoder stages: transposed (default) 4x4/2 transposed convolutions; resize: nearest x2 then conv "
             "3x3; subpixel: conv 3x3 to 4C then PixelShuffle, ICNR-initialised (train.model)")
    add("--objective", choices=OBJECTIVES, default=default.objective,
        help="betavae: recon + β·KL; tcvae: β-TCVAE; factorvae: FactorVAE; pairs: Ada-GVAE on slice pairs "
             "of one patient (see train.objectives)")  # fmt: skip
    add("--capacity-max", type=float, default=None, help="capacity annealing (betavae): final C in nats")
    add("--capacity-steps", type=int, default=default.capacity_steps, help="steps to ramp C from 0")
    add("--gamma", type=float, default=default.gamma, help="capacity annealing weight")
    add("--tc-alpha", type=float, default=default.tc_alpha, help="tcvae: weight of index-code mutual information")
    add("--tc-beta", type=float, default=default.tc_beta, help="tcvae: weight of total correlation")
    add("--tc-gamma", type=float, default=default.tc_gamma, help="tcvae: weight of dimension-wise KL")
    add("--factor-gamma", type=float, default=default.factor_gamma, help="factorvae: weight of the TC estimate")
    add("--factor-hidden", type=int, default=default.factor_hidden, help="factorvae: discriminator layer width")
    add("--factor-lr", type=float, default=default.factor_lr, help="factorvae: discriminator learning rate")
    add("--pair-adjacent", action="store_true", help="pairs: pair each slice with a neighbouring slice")
    add("--recon", choices=RECON_LOSSES, default=default.recon,
        help="reconstruction term: l2 (default) summed squared error, l1 summed absolute error (train.model)")
    add("--ssim-weight", type=float, default=default.ssim_weight,
        help="weight of S²·(1 − MS-SSIM) (default 0: off; train.losses)")
    add("--freq-weight", type=float, default=default.freq_weight,
        help="weight of the focal frequency loss, Jiang et al. 2021 (default 0: off; train.losses)")
    add("--adv-weight", type=float, default=default.adv_weight,
        help="weight of the PatchGAN hinge term S²·(−D(x̂)) (default 0: no discriminator; train.losses)")
    add("--adv-start", type=int, default=default.adv_start, metavar="STEP",
        help="step at which the discriminator and its term switch on (default 0)")
    add("--bind", default=default.bind, metavar="FACTORS",
        help="bind the first units to measured factors (ctgen.factors), in this order: a comma list such as "
             "rotation_deg,level,head_width_max_mm, or auto (every factor measured on most training slices "
             "that varies); see train.binding")
    add("--bind-weight", type=float, default=default.bind_weight,
        help="weight w of the bound units' Gaussian likelihood w·Σ(μ−y)²/(2σ²), σ=0.1 "
             f"(default {default.bind_weight:g})")
    add("--free-weight", type=float, default=default.free_weight,
        help=f"weight of the term that keeps the free units off the bound factors (default {default.free_weight:g})")
    add("--free-term", choices=("covariance", "adversary"), default=default.free_term,
        help="that term: covariance (default) the free means' squared batch cross-covariance with the labels; "
             "adversary an MLP regressing the labels from them through gradient reversal (train.binding)")
    add("--bind-fraction", type=float, default=default.bind_fraction,
        help="share of training patients whose labels are used, seeded (default 1: all)")
    add("--cycle-weight", type=float, default=default.cycle_weight,
        help="weight of the bound units' latent cycle: one bound unit changed, decoded, encoded again and read "
             "back (default 0: off; train.binding)")
    add("--cycle-reader", choices=("joint", "frozen"), default=default.cycle_reader,
        help="who learns from the cycle: joint (default) the decoder and the encoder, frozen the decoder alone "
             "(the encoder reads with its weights held constant)")
    add("--bind-from", default=None, metavar="FACTORS_CSV",
        help="labels from a phantom's factors.csv instead of the measured factors (research runs only)")
    add("--epochs", type=int, default=default.epochs)
    add("--batch-size", type=int, default=default.batch_size, help="global batch (split across processes)")
    add("--lr", type=float, default=default.lr)
    add("--weight-decay", type=float, default=default.weight_decay)
    add("--seed", type=int, default=default.seed)
    add("--val-fraction", type=float, default=default.val_fraction, help="share of patients for validation")
    add("--split-by", choices=SPLIT_BY, default="auto",
        help="what a patient is for the split: auto (PatientID; the study when the ID is empty; ID, birth date "
             "and sex when one ID holds different people), patient (PatientID only) or study")
    add("--filter-brain", action="store_true", help="train on slices with brain only (rule in train.data)")
    add("--brain-threshold", type=float, default=default.brain_threshold)
    add("--workers", type=int, default=default.workers, help="processes that build the cache")
    add("--device", choices=["auto", "cpu", "cuda"], default=default.device)
    add("--precision", choices=["auto", "fp32", "bf16"], default=default.precision,
        help="autocast dtype; auto: bf16 on CUDA, fp32 on CPU (bf16 pays off with AVX512-BF16/AMX)")  # fmt: skip
    add("--compile", action="store_true", help="torch.compile the model (CUDA)")
    add("--resume", action="store_true", help="continue the run in --out from checkpoint_last.pt")
    add("--force", action="store_true", help="start over in a run folder that has checkpoints")
    add("--quiet", action="store_true", help="no progress display")
    add("--no-tensorboard", dest="tensorboard", action="store_false")


def config_from_args(args: argparse.Namespace):
    """TrainConfig from parsed add_arguments options."""
    from train.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train the ctgen β-VAE on DICOM folders.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.data and not args.resume:
        parser.error("--data is required (except with --resume)")

    from ctgen.errors import CtgenError
    from train import ddp
    from train.train import train

    finished = False
    try:
        config = config_from_args(args)
        summary = train(config, command=command_line("train", argv), show_selection=True)
        finished = True
    except CtgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        ddp.shutdown(finished=finished)
    if int(os.environ.get("RANK", "0")) == 0:
        print(next_steps(summary["run"]))
    return 0


def next_steps(run: str) -> str:
    """What stdout says when a run finishes: the run folder, and the export command to run next."""
    model = str(Path("models") / Path(run).name)
    return f"run: {run}\nnext: python -m export {shlex.quote(run)} --out {shlex.quote(model)}"


if __name__ == "__main__":
    sys.exit(main())
