"""Opening a run: its folder (fresh, --force, or --resume from a verified checkpoint with the files
repaired), its data in memory, its text files and pictures. Only rank 0 writes files."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctgen.io.atomic import atomic_file
from ctgen.errors import CtgenError, InputError, ModelError, OutputError
from ctgen.images.preprocess import WINDOW_DEFAULT, Grid
from ctgen.io.scan import SPLIT_BY
from train import ddp
from train.checkpoint import LAST, METRICS, load_checkpoint_verified, lock_run, remove_stale_files, repair_run
from train.config import RESUMABLE, TrainConfig
from train.data import build_cache, describe_selection, open_cache, split_indices, split_patients
from train.binding import Binding, file_labels, make_binding
from train.model import BetaVAE
from train.objectives import OBJECTIVES

__all__ = ["Data", "load_data", "open_run", "save_pictures", "write_text"]


def write_text(path: Path, text: str) -> None:
    with atomic_file(path, force=True, mode="w") as handle:
        handle.write(text)


def _save_grid_png(
    images: np.ndarray, path: Path, grid: Grid, rows: int, cols: int, row_labels: list[str] | None = None
) -> None:
    """float (rows·cols, S, S) in [0, 1] -> PNG at the brain window (ctgen.images.render)."""
    from ctgen.images.preprocess import from_model
    from ctgen.images.render import grid_image, save_png

    lo, hi = WINDOW_DEFAULT  # the brain range, whatever the HU map: pictures stay comparable across runs
    picture = grid_image(
        from_model(images, grid), ((lo + hi) / 2, hi - lo), rows=rows, cols=cols, row_labels=row_labels
    )
    save_png(picture, path, force=True)


def open_run(cfg: TrainConfig, command: str, ctx: ddp.Dist, stack: ExitStack
             ) -> tuple[TrainConfig, str, dict[str, Any] | None]:  # fmt: skip
    """(config, command, checkpoint or None). On --resume the verified checkpoint_last.pt supplies the
    config (but RESUMABLE options); rank 0 locks the folder (released by ``stack``), removes temporary files
    of killed runs and repairs best checkpoint and metrics.jsonl, or on a fresh start clears old files."""
    run = Path(cfg.out)
    last_path = run / LAST
    checkpoint = None
    if cfg.resume and last_path.is_file():
        keys = ("config", "model", "optimizer", "train", "split", "epoch", "step", "best_val_loss", "rng", "metrics")
        checkpoint = load_checkpoint_verified(last_path, keys=keys)
        try:
            saved = TrainConfig(**checkpoint["train"])
        except TypeError as exc:
            raise ModelError(last_path, f"training options not understood ({exc})") from None
        for name in RESUMABLE:
            setattr(saved, name, getattr(cfg, name))
        saved.data = cfg.data or saved.data  # the data may have moved; the split check guards the rest
        cfg = saved
        cfg.resume = True
        command = checkpoint.get("command", command) + (f"  # resumed: {command}" if command else "")
    elif last_path.exists() and not cfg.force and not cfg.resume:
        raise OutputError(run, "holds a run already; pass --resume to continue it or --force to start over")
    if not cfg.data:
        raise InputError(None, "no --data given")
    try:
        cfg.model_config  # noqa: B018 -- validates image size, latent size, width
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if cfg.batch_size < 1 or cfg.epochs < 0 or cfg.lr <= 0 or cfg.capacity_steps < 1 or cfg.factor_hidden < 1:
        raise InputError(None, "--batch-size, --capacity-steps and --factor-hidden must be positive, --epochs >= 0, "
                               "--lr > 0")  # fmt: skip
    cfg.check_losses()
    if cfg.split_by not in SPLIT_BY:
        raise InputError(None, f"--split-by must be one of {', '.join(SPLIT_BY)}, not {cfg.split_by!r}")
    if cfg.objective not in OBJECTIVES:
        raise InputError(None, f"--objective {cfg.objective}: choose from {', '.join(OBJECTIVES)}")
    if cfg.capacity_max is not None and cfg.objective != "betavae":
        raise InputError(None, "--capacity-max works with --objective betavae only")
    if ctx.main:
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(run, f"cannot create the run folder ({exc.strerror or exc})") from None
        stack.enter_context(lock_run(run))
        remove_stale_files(run)
        if checkpoint is None:  # a fresh start (or --force): nothing of an earlier run may linger
            for pattern in ("checkpoint_*.pt*", "events.out.tfevents.*", "recon_epoch*.png", "samples_epoch*.png"):
                for stale in run.glob(pattern):
                    stale.unlink()
            (run / METRICS).unlink(missing_ok=True)
        else:
            repair_run(run, checkpoint, checkpoint["epoch"])
    return cfg, command, checkpoint


@dataclass
class Data:
    """The slices of a run in memory: ``images`` float16 (M, S, S) (on the GPU when it fits), training
    and validation rows into it, the split and the data summary that the checkpoint records."""

    images: torch.Tensor
    train_rows: torch.Tensor
    val_rows: torch.Tensor
    device: torch.device
    on_device: bool
    split: dict[str, Any]
    summary: dict[str, Any]
    train_records: list[dict[str, Any]]  # cache records of the training rows, in order
    binding: Binding | None = None  # the bound factors (train.binding), None without --bind
    labels: torch.Tensor | None = None  # float32 (M, B) standardised labels of `images`' rows, NaN: none

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.images.index_select(0, rows).to(self.device, non_blocking=True).unsqueeze(1).float()  # (B, 1, S, S)
        return x.contiguous(memory_format=torch.channels_last)  # NHWC: faster convolutions on GPU and CPU

    def batch_labels(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The standardised labels float32 (B, K) of ``rows`` on the device; None without a binding."""
        if self.labels is None:
            return None
        return self.labels.index_select(0, rows).to(self.device, non_blocking=True)


def load_data(cfg: TrainConfig, ctx: ddp.Dist, device: torch.device, console: Any, checkpoint: dict | None, *,
              show_selection: bool = False) -> Data:
    """Cache (rank 0 builds, the others open it), patient split (checked against a resumed run's), the
    used slices in RAM or on the GPU; ``show_selection`` prints what the archive held on a fresh run (even
    with --quiet), and says when it creates the cache folder. Raises InputError."""
    grid = cfg.grid
    cache_dir: str | tuple[str, str] | None = None
    if ctx.main:
        if show_selection and not Path(cfg.cache).exists():
            print(f"creating the slice cache folder {cfg.cache}{os.sep} (shared by later runs; --cache moves it)",
                  file=sys.stderr, flush=True)
        try:
            if console is not None:
                with console.status("preprocessing DICOM into the slice cache ...") as status:

                    def on_file(done: int, total: int) -> None:
                        status.update(f"preprocessing DICOM into the slice cache: {done}/{total} files")

                    cache = build_cache(cfg.data, cfg.cache, grid, workers=cfg.workers, progress=on_file,
                                        split_by=cfg.split_by)
            else:
                cache = build_cache(cfg.data, cfg.cache, grid, workers=cfg.workers, split_by=cfg.split_by)
            cache_dir = str(cache.path)
            if show_selection and checkpoint is None:
                for line in describe_selection(cache):
                    print(line, file=sys.stderr, flush=True)
        except CtgenError as exc:
            ddp.broadcast_object(ctx, ("error", str(exc)))  # release the waiting ranks, then fail
            raise
    cache_dir = ddp.broadcast_object(ctx, cache_dir)
    if isinstance(cache_dir, tuple):
        raise InputError(None, f"rank 0 could not build the cache: {cache_dir[1]}")
    if not ctx.main:
        cache = open_cache(cache_dir, cfg.split_by)

    patients = cache.patients
    split = split_patients(patients, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if checkpoint is not None and checkpoint["split"] != split:
        raise InputError(cfg.out, "the data's patients differ from the run's split.json; cannot resume")
    train_idx, val_idx = split_indices(patients, split)
    if cfg.filter_brain:
        keep = cache.brain_fractions > cfg.brain_threshold
        train_idx, val_idx = train_idx[keep[train_idx]], val_idx[keep[val_idx]]
    if len(train_idx) == 0:
        raise InputError(cache.path, "no training slices left (check --filter-brain / --val-fraction)")

    used = np.sort(np.concatenate([train_idx, val_idx]))
    binding, labels = None, None
    if cfg.bind:
        binding, label_values = _bind(cfg, cache, patients, train_idx, checkpoint)
        labels = torch.from_numpy(label_values[used])
    images = torch.from_numpy(np.ascontiguousarray(cache.images[used]))  # (M, S, S) float16, in RAM
    train_rows = torch.from_numpy(np.searchsorted(used, train_idx))  # rows of `images`
    val_rows = torch.from_numpy(np.searchsorted(used, val_idx))
    on_device = False
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        on_device = images.numel() * 2 < 0.4 * free
        images = images.to(device) if on_device else images.pin_memory()
    if on_device:
        train_rows, val_rows = train_rows.to(device), val_rows.to(device)
    if labels is not None and on_device:
        labels = labels.to(device)
    summary = {
        "sources": cache.info["sources"],
        "cache_key": cache.info["key"],
        "files": cache.info["files"],
        "skipped_files": cache.info["skipped_files"],
        "patients": cache.info["patients"],
        "slices": cache.info["slices"],
        "filter_brain": {"threshold": cfg.brain_threshold} if cfg.filter_brain else None,
        "split": {
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
            "train_patients": len(split["train_patients"]),
            "val_patients": len(split["val_patients"]),
            "train_slices": len(train_idx),
            "val_slices": len(val_idx),
        },
    }
    return Data(images=images, train_rows=train_rows, val_rows=val_rows, device=device, on_device=on_device,
                split=split, summary=summary, train_records=[cache.records[i] for i in train_idx],
                binding=binding, labels=labels)  # fmt: skip


def _bind(cfg: TrainConfig, cache: Any, patients: list[str], train_idx: np.ndarray,
          checkpoint: dict | None) -> tuple[Binding, np.ndarray]:  # fmt: skip
    """The run's Binding (a resumed run's own, from its checkpoint) and the standardised labels float32
    (N, B) of every cached slice: NaN where not measured and on the training slices of unlabelled patients."""
    if cfg.bind_from:
        names, values = file_labels(cfg.bind_from, cache.records)
        source = f"file:{Path(cfg.bind_from).name}"
    else:
        names, values = cache.factor_names, cache.factors
        source = "measured"
        if not names:
            raise InputError(None, "--bind: the 'window' HU map clips away what the factors are measured on "
                                   "(use --hu-map ct, or --bind-from)")  # fmt: skip
    train_patients = [patients[i] for i in train_idx]
    if checkpoint is not None and checkpoint.get("binding") is not None:
        binding = Binding.from_record(checkpoint["binding"])
    elif checkpoint is not None:
        raise ModelError(Path(cfg.out) / LAST, "was trained without --bind; cannot resume with it")
    else:
        binding = make_binding(cfg, names, values[train_idx], train_patients, source)
    columns = [list(names).index(name) for name in binding.factors]
    labels = binding.standardise(values[:, columns])
    unlabelled = np.setdiff1d(train_idx, train_idx[np.isin(np.asarray(train_patients), binding.labelled)])
    labels[unlabelled] = np.nan
    return binding, labels


def save_pictures(model: BetaVAE, originals: torch.Tensor, run: Path, epoch: int, grid: Grid,
                  prior_z: torch.Tensor, autocast: Any) -> None:  # fmt: skip
    """recon_epochNNN.png (``originals`` (B, 1, S, S) over decode(mu)) and samples_epochNNN.png (decoded
    ``prior_z`` (16, L))."""
    model.eval()
    with torch.no_grad(), autocast():
        recon_grid = torch.cat([originals, model.decode(model.encode(originals)[0]).float()])
        samples = model.decode(prior_z.to(originals.device)).float()
    _save_grid_png(recon_grid[:, 0].cpu().numpy(), run / f"recon_epoch{epoch:03d}.png", grid,
                   2, len(originals), ["original", "decode(mu)"])  # fmt: skip
    _save_grid_png(samples[:, 0].cpu().numpy(), run / f"samples_epoch{epoch:03d}.png", grid, 4, 4)
