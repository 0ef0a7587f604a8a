"""The training loop: ``train(TrainConfig(...))``, flat, top to bottom.

cache -> patient split -> in-memory tensor -> AdamW steps over a seeded permutation per epoch ->
validation (per-unit KL, active units) -> checkpoint_last.pt / checkpoint_best.pt, metrics.jsonl,
TensorBoard events, recon/sample PNGs. Under torchrun each process takes a disjoint slice of every
global batch (DDP); rank 0 builds the cache and alone writes files.

Randomness is derived from (seed, purpose, epoch[, rank]) rather than carried along, so a run resumed
from the checkpoint of epoch k draws exactly what the uninterrupted run drew in epoch k + 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctgen.errors import CtgenError, InputError, OutputError
from ctgen.preprocess import CT_MAP, Grid, HUMap, WINDOW_DEFAULT
from train import ddp
from train.data import BRAIN_FRACTION_MIN, build_cache, open_cache, split_indices, split_patients
from train.model import ACTIVE_UNIT_KL, RECONSTRUCTION_LOSS, BetaVAE, VAEConfig, vae_loss

__all__ = ["TrainConfig", "train", "FIELD_OF_VIEW_MM"]

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
    hu_map: str = "window"  # "window": HU -50..250 clipped (version-1 cards); "ct": ctgen.preprocess.CT_MAP
    latent: int = 50
    width: int = 32
    beta: float = 4.0
    capacity_max: float | None = None  # nats; set to use recon + gamma·|KL - C|
    capacity_steps: int = 10000
    gamma: float = 100.0
    epochs: int = 20
    batch_size: int = 64  # global: split across torchrun processes
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    val_fraction: float = 0.2
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

    @property
    def grid(self) -> Grid:
        spacing = self.spacing_mm if self.spacing_mm is not None else FIELD_OF_VIEW_MM / self.image_size
        if self.hu_map not in HU_MAPS:
            raise InputError(None, f"--hu-map must be one of {', '.join(HU_MAPS)}, not {self.hu_map!r}")
        return Grid(size=self.image_size, spacing_mm=spacing, hu_map=HU_MAPS[self.hu_map])

    @property
    def model_config(self) -> VAEConfig:
        return VAEConfig(image_size=self.image_size, latent_size=self.latent, width=self.width)


def _derived_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, staging)
    os.replace(staging, path)


def _atomic_write_text(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available to PyTorch")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _save_grid_png(
    images: np.ndarray, path: Path, grid: Grid, rows: int, cols: int, row_labels: list[str] | None = None
) -> None:
    """float (rows·cols, S, S) in [0, 1] -> PNG over the model's whole window (ctgen.render, else Pillow)."""
    try:
        from ctgen.preprocess import from_model
        from ctgen.render import grid_image, save_png

        lo, hi = WINDOW_DEFAULT  # the brain range, whatever the HU map: pictures stay comparable across runs
        picture = grid_image(
            from_model(images, grid), ((lo + hi) / 2, hi - lo), rows=rows, cols=cols, row_labels=row_labels
        )
        save_png(picture, path, force=True)
    except ImportError:
        from PIL import Image

        size = images.shape[-1]
        tiles = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(rows, cols, size, size)
        Image.fromarray(tiles.transpose(0, 2, 1, 3).reshape(rows * size, cols * size)).save(path)


def train(cfg: TrainConfig, *, command: str = "") -> dict[str, Any]:
    """Train (or resume) the run in ``cfg.out``; returns a summary dict (run, best_val_loss, metrics).

    Raises InputError for bad data or options, OutputError when the run folder holds a run and neither
    --resume nor --force is given.
    """
    device = _resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = ddp.init(device.type)
    run = Path(cfg.out)
    last_path, best_path = run / "checkpoint_last.pt", run / "checkpoint_best.pt"

    # ---- run folder, resume --------------------------------------------------------------------
    checkpoint = None
    if cfg.resume and last_path.is_file():
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=True)
        saved = TrainConfig(**checkpoint["train"])
        for name in RESUMABLE:
            setattr(saved, name, getattr(cfg, name))
        saved.data = cfg.data or saved.data  # the data may have moved; the split check below guards the rest
        cfg = saved
        cfg.resume = True
        command = checkpoint.get("command", command) + (f"  # resumed: {command}" if command else "")
    elif last_path.exists() and not cfg.force and not cfg.resume:
        raise OutputError(run, "holds a run already; pass --resume to continue it or --force to start over")
    if not cfg.data:
        raise InputError(None, "no --data given")
    try:
        model_config = cfg.model_config
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if cfg.batch_size < 1 or cfg.epochs < 0 or cfg.lr <= 0 or cfg.capacity_steps < 1:
        raise InputError(None, "--batch-size and --capacity-steps must be positive, --epochs >= 0, --lr > 0")
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:  # a fresh start (or --force): nothing of an earlier run may linger
            for pattern in ("checkpoint_*.pt", "events.out.tfevents.*", "recon_epoch*.png", "samples_epoch*.png"):
                for stale in run.glob(pattern):
                    stale.unlink()
            (run / "metrics.jsonl").unlink(missing_ok=True)

    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if ctx.enabled:  # several processes share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world))
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    console = None
    if ctx.main and not cfg.quiet:
        from rich.console import Console

        console = Console(stderr=True)

    # ---- data: cache (rank 0 builds), split, in-memory tensor ----------------------------------
    grid = cfg.grid
    cache_dir: str | tuple[str, str] | None = None
    if ctx.main:
        try:
            if console is not None:
                with console.status("preprocessing DICOM into the slice cache ...") as status:

                    def on_file(done: int, total: int) -> None:
                        status.update(f"preprocessing DICOM into the slice cache: {done}/{total} files")

                    cache = build_cache(cfg.data, cfg.cache, grid, workers=cfg.workers, progress=on_file)
            else:
                cache = build_cache(cfg.data, cfg.cache, grid, workers=cfg.workers)
            cache_dir = str(cache.path)
        except CtgenError as exc:
            ddp.broadcast_object(ctx, ("error", str(exc)))  # release the waiting ranks, then fail
            raise
    cache_dir = ddp.broadcast_object(ctx, cache_dir)
    if isinstance(cache_dir, tuple):
        raise InputError(None, f"rank 0 could not build the cache: {cache_dir[1]}")
    if not ctx.main:
        cache = open_cache(cache_dir)

    patients = cache.patients
    split = split_patients(patients, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if checkpoint is not None and checkpoint["split"] != split:
        raise InputError(run, "the data's patients differ from the run's split.json; cannot resume")
    train_idx, val_idx = split_indices(patients, split)
    if cfg.filter_brain:
        keep = cache.brain_fractions > cfg.brain_threshold
        train_idx, val_idx = train_idx[keep[train_idx]], val_idx[keep[val_idx]]
    if len(train_idx) == 0:
        raise InputError(cache.path, "no training slices left (check --filter-brain / --val-fraction)")
    n_train, n_val = len(train_idx), len(val_idx)

    used = np.sort(np.concatenate([train_idx, val_idx]))
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

    def batch(rows: torch.Tensor) -> torch.Tensor:
        x = images.index_select(0, rows).to(device, non_blocking=True).unsqueeze(1).float()  # (B, 1, S, S)
        return x.contiguous(memory_format=torch.channels_last)  # NHWC: faster convolutions on GPU and CPU

    data_summary = {
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
            "train_slices": n_train,
            "val_slices": n_val,
        },
    }

    # ---- model, optimizer ----------------------------------------------------------------------
    model = BetaVAE(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, step, best_val = 0, 0, math.inf
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, step, best_val = checkpoint["epoch"], checkpoint["step"], checkpoint["best_val_loss"]
        torch.set_rng_state(checkpoint["rng"]["torch"])
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        for state in optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)
    train_model: torch.nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    # ---- run folder files (rank 0) -------------------------------------------------------------
    writer = None
    if ctx.main:
        config_record = {
            "train": asdict(cfg),
            "model": asdict(model_config),
            "grid": grid.to_card(),
            "command": command,
            "world_size": ctx.world,
            "device": str(device),
            "torch": str(torch.__version__),
        }
        _atomic_write_text(run / "config.json", json.dumps(config_record, indent=1) + "\n")
        _atomic_write_text(run / "command.txt", command + "\n")
        split_record = {**split, **{k: v for k, v in data_summary["split"].items() if k.endswith("_slices")}}
        _atomic_write_text(run / "split.json", json.dumps(split_record, indent=1) + "\n")
        metrics_path = run / "metrics.jsonl"
        if metrics_path.exists():  # drop epochs logged after the checkpoint we resume from
            lines = metrics_path.read_text().splitlines()
            kept = [line for line in lines if line and json.loads(line)["epoch"] <= start_epoch]
            _atomic_write_text(metrics_path, "".join(line + "\n" for line in kept))
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run))

    # fixed pictures: up to 8 validation slices (or training, without validation) and 16 prior samples
    show_rows = val_rows if n_val else train_rows
    show_rows = show_rows[torch.linspace(0, len(show_rows) - 1, min(8, len(show_rows))).long()]
    prior_z = torch.randn(16, cfg.latent, generator=torch.Generator().manual_seed(_derived_seed(cfg.seed, "prior")))

    batch_size = max(ctx.world, min(cfg.batch_size, n_train))
    steps_per_epoch = n_train // batch_size  # the last partial batch is dropped
    eval_batch = 2 * batch_size

    def capacity_at(at_step: int) -> float | None:
        if cfg.capacity_max is None:
            return None
        return cfg.capacity_max * min(1.0, at_step / max(1, cfg.capacity_steps))

    def objective(recon: float, kl: float, capacity: float | None) -> float:
        return recon + cfg.beta * kl if capacity is None else recon + cfg.gamma * abs(kl - capacity)

    progress = None
    if console is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.2f}  recon {task.fields[recon]:.2f}  KL {task.fields[kl]:.2f}"),
            TimeRemainingColumn(),
            console=console,
        )
        progress.start()
        console.print(
            f"[dim]{n_train} train / {n_val} val slices, {len(split['train_patients'])}/"
            f"{len(split['val_patients'])} patients, {steps_per_epoch} steps/epoch, batch {batch_size}, "
            f"{device}{f' x{ctx.world}' if ctx.enabled else ''}, data on {'GPU' if on_device else 'CPU'}",
            soft_wrap=True,
        )

    last_metrics: dict[str, Any] = checkpoint["metrics"] if checkpoint is not None else {}
    # ---- epochs --------------------------------------------------------------------------------
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            started, started_cpu = time.perf_counter(), time.process_time()
            model.train()
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(_derived_seed(cfg.seed, epoch)))
            order = order.to(train_rows.device)
            noise = torch.Generator(device).manual_seed(_derived_seed(cfg.seed, "noise", epoch, ctx.rank))
            sums = torch.zeros(4 + cfg.latent, device=device)  # loss, recon, kl, images, kl per unit (summed)
            task = None
            if progress is not None:
                task = progress.add_task("", total=steps_per_epoch, epoch=epoch, loss=0.0, recon=0.0, kl=0.0)
            for index in range(steps_per_epoch):
                rows = train_rows[order[index * batch_size : (index + 1) * batch_size][ctx.rank :: ctx.world]]
                x = batch(rows)
                eps = torch.randn((len(rows), cfg.latent), generator=noise, device=device)
                capacity = capacity_at(step)
                with autocast():
                    recon, mu, logvar = train_model(x, noise=eps)
                terms = vae_loss(x, recon, mu, logvar, beta=cfg.beta, capacity=capacity, gamma=cfg.gamma)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                optimizer.step()
                step += 1
                sums[:3] += torch.stack([terms.loss.detach(), terms.recon.detach(), terms.kl.detach()]) * len(rows)
                sums[3] += len(rows)
                sums[4:] += terms.kl_units.detach() * len(rows)
                if task is not None and (device.type == "cpu" or index % 10 == 0 or index == steps_per_epoch - 1):
                    progress.update(task, completed=index + 1, loss=terms.loss.item(),
                                    recon=terms.recon.item(), kl=terms.kl.item())  # fmt: skip
            ddp.all_reduce_sum(ctx, sums)
            loss_sum, recon_sum, kl_sum, seen = sums[:4].tolist()
            train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
            if task is not None:
                progress.remove_task(task)

            # ---- validation: loss with sampled z (fixed noise), per-unit KL, MAE in HU of decode(mu)
            model.eval()
            val_generator = torch.Generator(device).manual_seed(_derived_seed(cfg.seed, "val", ctx.rank))
            mine = val_rows[ctx.rank :: ctx.world]
            val_sums = torch.zeros(3 + cfg.latent, device=device, dtype=torch.float64)  # recon, abs, n, kl units
            with torch.no_grad():
                for start in range(0, len(mine), eval_batch):
                    x = batch(mine[start : start + eval_batch])
                    eps = torch.randn((len(x), cfg.latent), generator=val_generator, device=device)
                    with autocast():
                        recon, mu, logvar = model(x, noise=eps)
                        mean_recon = model.decode(mu)
                    terms = vae_loss(x, recon, mu, logvar)
                    val_sums[0] += terms.recon.double() * len(x)
                    val_sums[1] += (mean_recon.float() - x).abs().mean((1, 2, 3)).sum().double()
                    val_sums[2] += len(x)
                    val_sums[3:] += terms.kl_units.double() * len(x)
            ddp.all_reduce_sum(ctx, val_sums)
            capacity = capacity_at(step)
            train_loss = loss_sum / max(seen, 1)
            metrics: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "train_loss": train_loss,
                "train_recon": recon_sum / max(seen, 1),
                "train_kl": kl_sum / max(seen, 1),
                "train_kl_per_unit": (sums[4:] / max(seen, 1)).tolist(),
                "capacity": capacity,
                "images_per_s": seen / train_seconds,
                "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu_seconds,  # this process, all threads
            }
            kl_units = metrics["train_kl_per_unit"]  # the validation set's when there is one
            if n_val:
                count = val_sums[2].item()
                kl_units = (val_sums[3:] / count).tolist()
                val_recon, val_kl = val_sums[0].item() / count, sum(kl_units)
                window = grid.window_hu[1] - grid.window_hu[0]
                metrics |= {
                    "val_loss": objective(val_recon, val_kl, capacity),
                    "val_recon": val_recon,
                    "val_kl": val_kl,
                    "recon_mae_hu": val_sums[1].item() / count * window,
                }
            metrics |= {
                "kl_per_unit": kl_units,
                "units_by_kl": sorted(range(cfg.latent), key=lambda u: -kl_units[u]),
                "active_units": sum(k > ACTIVE_UNIT_KL for k in kl_units),
            }
            selection = metrics.get("val_loss", train_loss)
            is_best = selection < best_val
            best_val = min(best_val, selection)
            metrics["seconds"] = time.perf_counter() - started
            last_metrics = metrics

            # ---- files (rank 0): pictures, checkpoints, logs
            if ctx.main:
                with torch.no_grad(), autocast():
                    originals = batch(show_rows)
                    recon_grid = torch.cat([originals, model.decode(model.encode(originals)[0]).float()])
                    samples = model.decode(prior_z.to(device)).float()
                _save_grid_png(recon_grid[:, 0].cpu().numpy(), run / f"recon_epoch{epoch:03d}.png", grid,
                               2, len(show_rows), ["original", "decode(mu)"])  # fmt: skip
                _save_grid_png(samples[:, 0].cpu().numpy(), run / f"samples_epoch{epoch:03d}.png", grid, 4, 4)
                state = {
                    "format": "ctgen-train-checkpoint",
                    "config": asdict(model_config),
                    "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "best_val_loss": best_val,
                    "train": asdict(cfg),
                    "loss": {
                        "reconstruction": RECONSTRUCTION_LOSS,
                        "beta": cfg.beta,
                        "capacity": None if cfg.capacity_max is None else
                        {"max_nats": cfg.capacity_max, "steps": cfg.capacity_steps, "gamma": cfg.gamma},
                        "active_unit_kl_nats": ACTIVE_UNIT_KL,
                    },  # fmt: skip
                    "grid": grid.to_card(),
                    "data": data_summary,
                    "split": split,
                    "metrics": metrics,
                    "command": command,
                    "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
                    "rng": {"torch": torch.get_rng_state()},
                }
                _atomic_torch_save(state, last_path)
                if is_best:
                    _atomic_torch_save(state, best_path)
                with open(run / "metrics.jsonl", "a") as log:
                    log.write(json.dumps(metrics) + "\n")
                if writer is not None:
                    for name, value in metrics.items():
                        if isinstance(value, float | int) and name not in ("epoch", "step"):
                            tag = name.replace("_", "/", 1) if name.startswith(("train_", "val_")) else name
                            writer.add_scalar(tag, value, step)
                    writer.flush()
                if console is not None:
                    val_text = (f"val {metrics['val_loss']:.2f} (recon {metrics['val_recon']:.2f}, "
                                f"KL {metrics['val_kl']:.2f}, {metrics['active_units']} active)") if n_val else ""
                    speed = f"{metrics['images_per_s']:.1f} img/s{'  *best' if is_best else ''}"
                    line = f"epoch {epoch}/{cfg.epochs}  train {train_loss:.2f}  {val_text}  {speed}"
                    console.print(line, soft_wrap=True)
            ddp.barrier(ctx)
    finally:
        if progress is not None:
            progress.stop()
        if writer is not None:
            writer.close()

    return {"run": str(run), "best_val_loss": best_val, "epochs": cfg.epochs, "metrics": last_metrics,
            "world_size": ctx.world}  # fmt: skip
