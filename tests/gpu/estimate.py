"""How long the GPU acceptance run takes: CPU figures measured here, scaled to the GPU machine.

``cpu_figures.json`` (beside this file) holds what ``measure_cpu.py`` measured on the
2-core development machine: phantom rendering and cache building per slice, the model's floating-point
operations per image, export time at 256², Python start-up. ``ASSUMPTIONS`` holds what cannot be
measured without the GPU, each with its reason. ``estimate`` turns both into seconds per stage for a
plan, choosing the number of epochs that fits the budget; the run then measures and adapts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().with_name("cpu_figures.json")

ASSUMPTIONS: dict[str, tuple[float, str]] = {
    "cpu_core_ratio": (1.0, "a core of the GPU machine is as fast as one of the development machine (unknown)"),
    "cores": (16, "the GPU machine's cores (KINDS.md)"),
    "bf16_tflops": (790.0, "bf16 matrix rate measured on an H200 of this workplace (KINDS.md)"),
    "efficiency": (0.10, "share of that rate this convolutional VAE reaches at 256², batch 64, eight runs sharing "
                         "the GPU (small channel counts, BatchNorm and activations are memory-bound); a guess"),
    "solo_efficiency": (0.05, "the same for one run alone (launch gaps no other process fills); a guess"),
    "phase_start_s": (12.0, "one training phase's start: torch import, CUDA context, cache to the GPU, cuDNN "
                            "autotuning"),
    "epoch_overhead_s": (1.5, "per epoch: checkpoints (up to 0.4 GB at latent 500), PNGs, metrics"),
    "install_s": (15.0, "pip install of the carried wheels, --no-compile"),
    "gpu_tests_s": (120.0, "pytest -m gpu: torch.compile's first compilation (~30-60 s) dominates; torchrun "
                           "and the NCCL test each start torch again"),
    "ort_tests_s": (40.0, "pytest -m gpu -k ort_cuda: a tiny export (fp32 + fp16) and CUDA sessions"),
    "ort_check_s": (30.0, "ORT CUDA vs CPU at 256²: session start, cuDNN, timed repeats"),
    "report_s": (5.0, "report, sample grid, copies"),
    "margin_s": (20.0, "slack kept free at the end"),
}


def assumption(name: str) -> float:
    return ASSUMPTIONS[name][0]


def load_figures(path: Path = FIGURES) -> dict[str, Any]:
    return json.loads(path.read_text())


def split_counts(patients: int, slices: int, val_fraction: float) -> tuple[int, int]:
    """(train slices, validation slices) as ``train.data.split_patients`` splits patients."""
    n_val = min(patients - 1, max(1, round(val_fraction * patients))) if val_fraction > 0 else 0
    return (patients - n_val) * slices, n_val * slices


def grid_epoch_s(plan: dict[str, Any], figures: dict[str, Any], efficiency: float, runs: int) -> float:
    """Seconds for one epoch of ``runs`` runs sharing the GPU (train + validation + files)."""
    flops = figures["flops_per_image"]
    n_train, n_val = split_counts(plan["patients"], plan["slices"], plan["val_fraction"])
    scale = (plan["image_size"] / flops["image_size"]) ** 2 * (plan["width"] / flops["width"]) ** 2
    work = n_train * flops["train_step"] + n_val * (flops["forward"] + flops["decoder"])
    rate = efficiency * assumption("bf16_tflops") * 1e12
    return runs * work * scale / rate + assumption("epoch_overhead_s")


def estimate(plan: dict[str, Any], figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """Seconds per stage of the GPU run described by ``plan`` and the epochs that fit ``plan["budget_s"]``."""
    figures = figures or load_figures()
    ratio, cores = assumption("cpu_core_ratio"), int(assumption("cores"))
    slices = plan["patients"] * plan["slices"]
    workers = min(cores, plan["patients"])
    stages: dict[str, float] = {}
    stages["install"] = assumption("install_s")
    stages["phantom"] = ratio * (figures["anatomy_s"] + 1.1 * slices * figures["phantom_cpu_s_per_slice"] / workers)
    stages["cache"] = ratio * (figures["python_torch_start_s"] + slices * figures["cache_cpu_s_per_slice"] / cores)
    stages["gpu_tests"] = assumption("gpu_tests_s")
    stages["ort_tests"] = assumption("ort_tests_s")
    n_train, _ = split_counts(plan["patients"], plan["slices"], plan["val_fraction"])
    solo = grid_epoch_s(plan, figures, assumption("solo_efficiency"), 1)
    stages["probe"] = assumption("phase_start_s") + solo
    stages["export"] = ratio * figures["export_s"]["seconds"]  # measured at the GPU run's size
    stages["ort_check"] = assumption("ort_check_s")
    stages["report"] = assumption("report_s")
    # the phantom and the cache (CPU) run beside the gpu tests (GPU): the longer of the two branches counts
    beside = max(stages["phantom"] + stages["cache"], stages["gpu_tests"] + stages["ort_tests"])
    fixed = beside + sum(stages[name] for name in ("install", "probe", "export", "ort_check", "report"))
    epoch = grid_epoch_s(plan, figures, assumption("efficiency"), len(plan["points"]))
    calibration = plan["calibration_epochs"]
    starts = 2 * assumption("phase_start_s")
    fit = math.floor((plan["budget_s"] - fixed - assumption("margin_s") - starts) / epoch)
    epochs = max(calibration, min(plan["max_epochs"], fit))
    stages["training"] = starts + epochs * epoch
    total = fixed + stages["training"]
    return {
        "total_s": round(total, 1),
        "budget_s": plan["budget_s"],
        "fits": total + assumption("margin_s") <= plan["budget_s"],
        "stages_s": {name: round(value, 1) for name, value in stages.items()},
        "beside_s": round(beside, 1),
        "epochs_planned": epochs,
        "grid_epoch_s": round(epoch, 2),
        "images_per_grid_epoch": n_train * len(plan["points"]),
        "training_s_for_max_epochs": round(starts + plan["max_epochs"] * epoch, 1),
        "assumptions": {name: {"value": value, "why": why} for name, (value, why) in ASSUMPTIONS.items()},
        "cpu_figures": {key: figures[key] for key in ("measured", "machine")},
    }


def format_estimate(result: dict[str, Any], plan: dict[str, Any]) -> str:
    stages = ", ".join(f"{name} {seconds:.0f}" for name, seconds in result["stages_s"].items())
    lines = [
        f"ESTIMATE of the GPU run: {result['total_s']:.0f} s of {result['budget_s']:.0f} s "
        f"({'fits' if result['fits'] else 'DOES NOT FIT'}; {result['total_s'] / 60:.1f} min)",
        f"  stages (s): {stages}; phantom + cache run beside the gpu and ort tests ({result['beside_s']:.0f} s)",
        f"  training: {len(plan['points'])} runs sharing the GPU, {plan['patients']} patients x {plan['slices']} "
        f"slices "
        f"at {plan['image_size']}², {result['epochs_planned']} epochs of ~{result['grid_epoch_s']:.0f} s "
        f"({plan['max_epochs']} epochs would take {result['training_s_for_max_epochs']:.0f} s); epochs are re-planned "
        f"from the measured time of the first {plan['calibration_epochs']}",
        f"  from CPU figures measured {result['cpu_figures']['measured']} on {result['cpu_figures']['machine']}; "
        "assumptions:",
    ]
    lines += [f"    {name} = {entry['value']:g}: {entry['why']}" for name, entry in result["assumptions"].items()]
    return "\n".join(lines)
