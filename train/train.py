"""The training loop: ``train(TrainConfig(...))``, flat, top to bottom.

open the run folder (resume: a verified checkpoint, the folder repaired) -> load the data (cache, patient
split, in-memory tensor) -> model, AdamW and the objective (train.objectives) -> per epoch: steps over a
seeded order, validation (per-unit KL, active units), pictures, the checkpoint unit (train.checkpoint:
checkpoint_last.pt, checkpoint_best.pt, metrics.jsonl) and TensorBoard events. Under torchrun each
process takes a disjoint slice of every global batch (DDP); rank 0 builds the cache and alone writes files.

Randomness is derived from (seed, purpose, epoch[, rank]) rather than carried along, so a run resumed
from the checkpoint of epoch k draws exactly what the uninterrupted run drew in epoch k + 1. A loss that
turns NaN or infinite stops the run before anything of that epoch is written (TrainingDiverged).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ctgen.errors import CtgenError, InputError, ModelError
from ctgen.images.preprocess import HUMap
from train import ddp
from train.checkpoint import FORMAT, LAST, METRICS, write_epoch
from train.config import FIELD_OF_VIEW_MM, TrainConfig
from train.binding import r2_from_sums, r2_sums
from train.data import derived_seed
from train.model import ACTIVE_UNIT_KL, BetaVAE
from train.objectives import Objective, make_objective
from train.run import Data, load_data, open_run, save_pictures, write_text

__all__ = ["TrainConfig", "TrainingDiverged", "train", "FIELD_OF_VIEW_MM"]


class TrainingDiverged(CtgenError):
    """The loss became NaN or infinite; the run stopped and the last checkpoint is the last good one."""


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available to PyTorch")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def to_hu(unit: torch.Tensor, hu_map: HUMap) -> torch.Tensor:
    """Model units -> HU through ``hu_map`` (piecewise linear, clipped to [0, 1]), on any device."""
    unit = unit.clamp(0.0, 1.0)
    hu = torch.full_like(unit, hu_map.hu[0])
    for (u0, u1), (h0, h1) in zip(zip(hu_map.unit, hu_map.unit[1:]), zip(hu_map.hu, hu_map.hu[1:])):
        hu = hu + (unit.clamp(u0, u1) - u0) * ((h1 - h0) / (u1 - u0))
    return hu


def validate(model: BetaVAE, objective: Objective, data: Data, seed: int, ctx: ddp.Dist, eval_batch: int,
             autocast: Any, hu_map: HUMap) -> dict[str, Any]:  # fmt: skip
    """One pass over the validation slices with sampled z (fixed noise), summed over processes:
    val_recon, val_kl, recon_mae_hu (of decode(mu)), kl_per_unit, the objective's val_<extras> and with a
    binding the bound units' figures (train.binding.r2_from_sums, each prefixed val_).
    {} without validation slices."""
    if len(data.val_rows) == 0:
        return {}
    latent, names = model.config.latent_size, objective.val_extras
    generator = torch.Generator(data.device).manual_seed(derived_seed(seed, "val", ctx.rank))
    mine = data.val_rows[ctx.rank :: ctx.world]
    sums = torch.zeros(3 + latent + len(names), device=data.device, dtype=torch.float64)  # recon, abs, n, kl, extras
    bound = data.binding is not None
    bind_sums = torch.zeros((len(data.binding.factors), 3 + 3 * latent) if bound else (0,), device=data.device,
                            dtype=torch.float64)  # fmt: skip
    model.eval()
    with torch.no_grad():
        for start in range(0, len(mine), eval_batch):
            x = data.batch(mine[start : start + eval_batch])
            eps = torch.randn((len(x), latent), generator=generator, device=data.device)
            with autocast():
                recon, mu, logvar = model(x, noise=eps)
                mean_recon = model.decode(mu)
            terms = objective.evaluate(x, recon, mu, logvar, eps, dataset_size=len(data.val_rows))
            sums[0] += terms.recon.double() * len(x)
            sums[1] += (to_hu(mean_recon.float(), hu_map) - to_hu(x, hu_map)).abs().mean((1, 2, 3)).sum().double()
            sums[2] += len(x)
            sums[3 : 3 + latent] += terms.kl_units.double() * len(x)
            for index, name in enumerate(names):
                sums[3 + latent + index] += terms.extra[name].double() * len(x)
            if bound:
                bind_sums += r2_sums(mu.float(), data.batch_labels(mine[start : start + eval_batch]))
    ddp.all_reduce_sum(ctx, sums)
    count = sums[2].item()
    kl_units = (sums[3 : 3 + latent] / count).tolist()
    result = {"val_recon": sums[0].item() / count, "val_kl": sum(kl_units),
              "recon_mae_hu": sums[1].item() / count, "kl_per_unit": kl_units}  # fmt: skip
    for index, name in enumerate(names):
        result[f"val_{name}"] = sums[3 + latent + index].item() / count
    if bound:
        ddp.all_reduce_sum(ctx, bind_sums)
        result |= {f"val_{key}": value for key, value in r2_from_sums(bind_sums, data.binding.factors).items()}
    return result


def _last_good(epoch: int) -> str:
    return f"{LAST} (epoch {epoch}) is the last good checkpoint" if epoch else "no checkpoint was written"


def _all_finite(ctx: ddp.Dist, values: torch.Tensor) -> bool:
    """Whether every process's values are finite (one small all-reduce under torchrun)."""
    bad = (~torch.isfinite(values)).any().float().reshape(1)
    return ddp.all_reduce_sum(ctx, bad).item() == 0


def train(cfg: TrainConfig, *, command: str = "", show_selection: bool = False) -> dict[str, Any]:
    """Train (or resume) the run in ``cfg.out``; returns a summary dict (run, best_val_loss, metrics).
    ``show_selection``: on a fresh run, print on stderr what the archive held (used, skipped by reason).

    Raises InputError for bad data or options, OutputError when the run folder holds a run and neither
    --resume nor --force is given (or another process trains in it), ModelError for a damaged checkpoint
    on --resume, TrainingDiverged when the loss becomes NaN or infinite.
    """
    device = _resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = ddp.init(device.type)
    with ExitStack() as stack:
        cfg, command, checkpoint = open_run(cfg, command, ctx, stack)
        return _train(cfg, command, checkpoint, ctx, device, stack, show_selection)


def _train(cfg: TrainConfig, command: str, checkpoint: dict[str, Any] | None, ctx: ddp.Dist, device: torch.device,
           stack: ExitStack, show_selection: bool) -> dict[str, Any]:  # fmt: skip
    run = Path(cfg.out)
    _set_up_torch(cfg, ctx, device)
    console = None
    if ctx.main and not cfg.quiet:
        from rich.console import Console

        console = Console(stderr=True)

    data = load_data(cfg, ctx, device, console, checkpoint, show_selection=show_selection)
    n_val = len(data.val_rows)

    # ---- model, optimizer, objective -----------------------------------------------------------
    model_config, grid = cfg.model_config, cfg.grid
    model = BetaVAE(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    objective = make_objective(cfg, train_records=data.train_records, device=device, autocast=autocast, ctx=ctx,
                               binding=data.binding)  # fmt: skip
    if objective.items_per_epoch == 0:
        raise InputError(cfg.out, "no patient has two training slices to pair (--objective pairs)")
    start_epoch, step, best_val, best_epoch, history = _resume(run, checkpoint, model, optimizer, objective, ctx)
    train_model = _placed(model, optimizer, cfg, ctx, device)

    # ---- run folder files (rank 0) -------------------------------------------------------------
    writer = None
    if ctx.main:
        _write_run_record(run, cfg, command, ctx, device, data)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = stack.enter_context(SummaryWriter(str(run)))

    # fixed pictures: up to 8 validation slices (or training, without validation) and 16 prior samples
    show_rows = data.val_rows if n_val else data.train_rows
    show_rows = show_rows[torch.linspace(0, len(show_rows) - 1, min(8, len(show_rows))).long()]
    prior_z = torch.randn(16, cfg.latent, generator=torch.Generator().manual_seed(derived_seed(cfg.seed, "prior")))
    per_step = max(ctx.world, min(cfg.batch_size // objective.images_per_item, objective.items_per_epoch))
    steps_per_epoch = objective.items_per_epoch // per_step  # the last partial batch is dropped
    batch_size = per_step * objective.images_per_item  # images
    eval_batch = 2 * batch_size

    progress = _progress_bar(console, stack, data, cfg, ctx, device, steps_per_epoch, batch_size)

    last_metrics: dict[str, Any] = checkpoint["metrics"] if checkpoint is not None else {}
    saved_epoch = start_epoch
    # ---- epochs --------------------------------------------------------------------------------
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        model.train()
        task = None
        if progress is not None:
            task = progress.add_task("", total=steps_per_epoch, epoch=epoch, loss=0.0, recon=0.0, kl=0.0)
        sums, step = _train_epoch(train_model, optimizer, objective, data, cfg, ctx, device, epoch=epoch, step=step,
                                  per_step=per_step, steps=steps_per_epoch, saved_epoch=saved_epoch,
                                  progress=progress, task=task)  # fmt: skip
        totals = sums[:4].tolist()  # waits for the epoch's last kernels, which the times below include
        train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
        if task is not None:
            progress.remove_task(task)

        validation = validate(model, objective, data, cfg.seed, ctx, eval_batch, autocast, grid.hu_map)
        metrics = _epoch_metrics(totals, sums, validation, objective, cfg.latent, epoch=epoch, step=step,
                                 train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds)  # fmt: skip
        selection = metrics.get("val_loss", metrics["train_loss"])
        if not math.isfinite(selection):
            raise TrainingDiverged(f"{run}: the validation loss became {selection} at epoch {epoch}; stopped: "
                                   f"{_last_good(saved_epoch)}")  # fmt: skip
        is_best = selection < best_val
        if is_best:
            best_val, best_epoch = selection, epoch
        metrics["seconds"] = time.perf_counter() - started
        last_metrics = metrics

        # ---- files (rank 0): pictures, then the checkpoint unit: last (the commit point), best, metrics line
        if ctx.main:
            save_pictures(model, data.batch(show_rows), run, epoch, grid, prior_z, autocast)
            history.append(metrics)
            state = _checkpoint_state(model, optimizer, objective, cfg, data, command, epoch=epoch, step=step,
                                      best_val=best_val, best_epoch=best_epoch, metrics=metrics, history=history)
            write_epoch(run, state, is_best=is_best)
            _log_epoch(writer, console, metrics, data, cfg.epochs, is_best=is_best, with_val=bool(n_val))
        saved_epoch = epoch
        ddp.barrier(ctx)

    return {"run": str(run), "best_val_loss": best_val, "epochs": cfg.epochs, "metrics": last_metrics,
            "world_size": ctx.world}  # fmt: skip


def _progress_bar(console: Any, stack: ExitStack, data: Data, cfg: TrainConfig, ctx: ddp.Dist, device: torch.device,
                  steps_per_epoch: int, batch_size: int) -> Any:
    """The epochs' progress bar on ``console`` (None without one), after a line saying what the run trains on."""
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = stack.enter_context(Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.2f}  recon {task.fields[recon]:.2f}  KL {task.fields[kl]:.2f}"),
        TimeRemainingColumn(), console=console,
    ))  # fmt: skip
    console.print(
        f"[dim]{len(data.train_rows)} train / {len(data.val_rows)} val slices, {len(data.split['train_patients'])}/"
        f"{len(data.split['val_patients'])} patients, {cfg.objective}, {steps_per_epoch} steps/epoch, batch "
        f"{batch_size}, {device}{f' x{ctx.world}' if ctx.enabled else ''}, data on "
        f"{'GPU' if data.on_device else 'CPU'}",
        soft_wrap=True,
    )
    return progress


def _set_up_torch(cfg: TrainConfig, ctx: ddp.Dist, device: torch.device) -> None:
    """The global seed, determinism on the CPU (and the cores shared between processes), fast kernels on CUDA."""
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if ctx.enabled:  # several processes share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world))
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _resume(run: Path, checkpoint: dict[str, Any] | None, model: BetaVAE, optimizer: torch.optim.Optimizer,
            objective: Objective, ctx: ddp.Dist) -> tuple[int, int, float, int | None, list[dict[str, Any]]]:
    """(start epoch, step, best validation loss, best epoch, metrics history): the checkpoint's state loaded
    into the model, optimizer, objective and torch's RNG; a fresh run's start without a checkpoint. Raises
    ModelError when the checkpoint does not fit."""
    if checkpoint is None:
        return 0, 0, math.inf, None, []
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        objective.load_state_dict(checkpoint.get("objective_state"))
        torch.set_rng_state(checkpoint["rng"]["torch"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        reason = next(iter(str(exc).strip().splitlines()), exc.__class__.__name__)[:200]
        raise ModelError(run / LAST, f"does not fit this model and objective ({reason})") from None
    history = []
    if ctx.main and (run / METRICS).exists():  # repaired by open_run
        history = [json.loads(line) for line in (run / METRICS).read_text().splitlines() if line]
    return checkpoint["epoch"], checkpoint["step"], checkpoint["best_val_loss"], checkpoint.get("best_epoch"), history


def _placed(model: BetaVAE, optimizer: torch.optim.Optimizer, cfg: TrainConfig, ctx: ddp.Dist,
            device: torch.device) -> torch.nn.Module:
    """The model on ``device`` (channels last, the optimizer's state beside it), wrapped for DDP under torchrun
    and compiled with ``--compile``: the module the steps run."""
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
    return train_model


def _write_run_record(run: Path, cfg: TrainConfig, command: str, ctx: ddp.Dist, device: torch.device,
                      data: Data) -> None:
    """config.json, command.txt and split.json of the run folder (rank 0)."""
    config_record = {"train": asdict(cfg), "model": asdict(cfg.model_config), "grid": cfg.grid.to_card(),
                     "command": command, "world_size": ctx.world, "device": str(device),
                     "torch": str(torch.__version__)}  # fmt: skip
    write_text(run / "config.json", json.dumps(config_record, indent=1) + "\n")
    write_text(run / "command.txt", command + "\n")
    split_record = {**data.split, **{k: v for k, v in data.summary["split"].items() if k.endswith("_slices")}}
    write_text(run / "split.json", json.dumps(split_record, indent=1) + "\n")


def _train_epoch(train_model: torch.nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, data: Data,
                 cfg: TrainConfig, ctx: ddp.Dist, device: torch.device, *, epoch: int, step: int, per_step: int,
                 steps: int, saved_epoch: int, progress: Any, task: Any) -> tuple[torch.Tensor, int]:
    """One epoch's ``steps`` optimizer steps over the objective's seeded order, ``per_step`` items each (this
    process takes every world-th). Returns (sums over every process: loss, recon, KL, images, KL per unit,
    extras; each summed over images) and the step count after it. Raises TrainingDiverged."""
    extras = objective.extras
    order = objective.epoch_order(epoch).to(data.train_rows.device)  # (K,) or (K, 2) training slices
    noise = torch.Generator(device).manual_seed(derived_seed(cfg.seed, "noise", epoch, ctx.rank))
    # loss, recon, kl, images, kl per unit, extras (summed over images)
    sums = torch.zeros(4 + cfg.latent + len(extras), device=device)
    for index in range(steps):
        items = order[index * per_step : (index + 1) * per_step][ctx.rank :: ctx.world]
        rows = data.train_rows[items.t().reshape(-1)]  # pairs: every first slice, then every partner
        x = data.batch(rows)
        eps = torch.randn((len(rows), cfg.latent), generator=noise, device=device)
        terms = objective.loss(train_model, x, eps, step=step, labels=data.batch_labels(rows), generator=noise)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        objective.after_step(terms, noise)
        step += 1
        sums[:3] += torch.stack([terms.loss.detach(), terms.recon.detach(), terms.kl.detach()]) * len(rows)
        sums[3] += len(rows)
        sums[4 : 4 + cfg.latent] += terms.kl_units.detach() * len(rows)
        for offset, name in enumerate(extras):
            sums[4 + cfg.latent + offset] += terms.extra[name].detach() * len(rows)
        # a sync per step costs a GPU real time: there the sums (which keep any NaN) are checked every 10 steps
        if (device.type == "cpu" or index % 10 == 9 or index == steps - 1) and not _all_finite(ctx, sums[:3]):
            value = terms.loss.item()
            shown = value if not math.isfinite(value) else "non-finite"
            raise TrainingDiverged(f"{Path(cfg.out)}: the loss became {shown} at epoch {epoch}, step {step}; stopped: "
                                   f"{_last_good(saved_epoch)} "
                                   "(try a lower --lr, or --precision fp32)")  # fmt: skip
        if task is not None and (device.type == "cpu" or index % 10 == 0 or index == steps - 1):
            progress.update(task, completed=index + 1, loss=terms.loss.item(),
                            recon=terms.recon.item(), kl=terms.kl.item())  # fmt: skip
    ddp.all_reduce_sum(ctx, sums)
    return sums, step


def _checkpoint_state(model: BetaVAE, optimizer: torch.optim.Optimizer, objective: Objective, cfg: TrainConfig,
                      data: Data, command: str, *, epoch: int, step: int, best_val: float, best_epoch: int | None,
                      metrics: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """What checkpoint_last.pt holds after ``epoch``: everything a resume, ``python -m export`` and the card need."""
    return {
        "format": FORMAT,
        "config": asdict(cfg.model_config),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "objective_state": objective.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_val_loss": best_val,
        "best_epoch": best_epoch,
        "train": asdict(cfg),
        "loss": objective.record(),
        "binding": data.binding.record() if data.binding is not None else None,
        "grid": cfg.grid.to_card(),
        "data": data.summary,
        "split": data.split,
        "metrics": metrics,
        "history": history,
        "command": command,
        "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
        "rng": {"torch": torch.get_rng_state()},
    }


def _epoch_metrics(totals: list[float], sums: torch.Tensor, validation: dict[str, Any], objective: Objective,
                   latent: int, *, epoch: int, step: int, train_seconds: float,
                   train_cpu_seconds: float) -> dict[str, Any]:  # fmt: skip
    """The metrics line of an epoch: training means of ``sums`` (``_train_epoch``; ``totals``: its first four),
    speed, the validation figures and loss, and the units ranked by KL (validation's KL when there is one, else
    training's)."""
    extras = objective.extras
    loss_sum, recon_sum, kl_sum, seen = totals
    seen = max(seen, 1)
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "train_loss": loss_sum / seen,
        "train_recon": recon_sum / seen,
        "train_kl": kl_sum / seen,
        "train_kl_per_unit": (sums[4 : 4 + latent] / seen).tolist(),
        **{f"train_{name}": sums[4 + latent + offset].item() / seen for offset, name in enumerate(extras)},
        "capacity": objective.capacity_at(step),
        "images_per_s": seen / train_seconds,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,  # this process, all threads
    }
    kl_units = validation.pop("kl_per_unit", metrics["train_kl_per_unit"])  # validation's when there is one
    if validation:
        val_extras = {name: validation[f"val_{name}"] for name in objective.val_extras}
        val_loss = objective.val_loss(validation["val_recon"], validation["val_kl"], val_extras, step)
        metrics |= {"val_loss": val_loss, **validation}
    metrics |= {
        "kl_per_unit": kl_units,
        "units_by_kl": sorted(range(latent), key=lambda u: -kl_units[u]),
        "active_units": sum(k > ACTIVE_UNIT_KL for k in kl_units),
    }
    return metrics


def _log_epoch(writer: Any, console: Any, metrics: dict[str, Any], data: Data, epochs: int, *, is_best: bool,
               with_val: bool) -> None:
    """An epoch's scalars to TensorBoard (``writer``) and its line (and the bound units' R²) to the console."""
    if writer is not None:
        for name, value in metrics.items():
            if isinstance(value, float | int) and name not in ("epoch", "step"):
                tag = name.replace("_", "/", 1) if name.startswith(("train_", "val_")) else name
                writer.add_scalar(tag, value, metrics["step"])
        writer.flush()
    if console is not None:
        val_text = (f"val {metrics['val_loss']:.2f} (recon {metrics['val_recon']:.2f}, "
                    f"KL {metrics['val_kl']:.2f}, {metrics['active_units']} active)") if with_val else ""
        speed = f"{metrics['images_per_s']:.1f} img/s{'  *best' if is_best else ''}"
        console.print(f"epoch {metrics['epoch']}/{epochs}  train {metrics['train_loss']:.2f}  {val_text}  {speed}",
                      soft_wrap=True)
        if data.binding is not None and with_val:
            figures = (f"{name} {metrics[f'val_bind_r2_{name}']:.2f}" for name in data.binding.factors)
            console.print("  bound units, val R²: " + ", ".join(figures), soft_wrap=True)
