"""Measure the CPU figures the acceptance estimate scales: ``python tests/gpu/measure_cpu.py``.

Writes tests/gpu/cpu_figures.json (see estimate.py): Python + torch start-up, phantom rendering per slice
(one worker), cache building per slice at 256², export of a 256² width-32 model with fp16 graphs and real
validation slices, all in CPU seconds (the development machine is shared: its wall clock swings with
the other jobs; the wall time of the export is kept beside), and the floating-point operations per
image of a training step, a forward pass and a decoder pass, counted by torch's FlopCounterMode.
A few minutes on the development machine; run it when the phantom, the cache or the model change.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SIZE, WIDTH, LATENT = 256, 32, 50
PATIENTS, SLICES = 2, 6


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_child(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a child process. On a shared machine the wall clock swings with the
    other jobs; the CPU time measures the work (most of it single-threaded here)."""
    cpu, started = _child_cpu_s(), time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return time.perf_counter() - started, _child_cpu_s() - cpu


def _flops() -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from train.model import BetaVAE, VAEConfig, vae_loss

    model = BetaVAE(VAEConfig(image_size=SIZE, latent_size=LATENT, width=WIDTH))
    images = torch.rand(2, 1, SIZE, SIZE)
    counted = {}
    with FlopCounterMode(display=False) as counter:
        recon, mu, logvar = model(images)
        vae_loss(images, recon, mu, logvar).loss.backward()
    counted["train_step"] = counter.get_total_flops() / 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    counted["forward"] = counter.get_total_flops() / 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.decode(mu)
    counted["decoder"] = counter.get_total_flops() / 2
    return {"image_size": SIZE, "width": WIDTH, "latent": LATENT, **counted}


def main() -> int:
    from train.phantom.study import generate_study
    from train.train import TrainConfig, train

    figures: dict = {
        "measured": date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {_cpu_model()}, load {os.getloadavg()[0]:.1f} at the start",
    }
    starts = sorted(_timed_child([sys.executable, "-c", "import torch"])[1] for _ in range(3))
    figures["python_torch_start_s"] = starts[1]  # CPU seconds, median of 3
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cpu = time.process_time()
        generate_study(scratch / "study0", PATIENTS, SLICES, 0, workers=1, contact_sheet=False)
        first_cpu = time.process_time() - cpu
        cpu = time.process_time()
        generate_study(scratch / "study", PATIENTS, SLICES, 0, workers=1, contact_sheet=False)
        second_cpu = time.process_time() - cpu
        figures["phantom_cpu_s_per_slice"] = second_cpu / (PATIENTS * SLICES)
        figures["anatomy_s"] = max(0.0, first_cpu - second_cpu)  # the MNI152 head, built once per process

        # epochs=0: the cache, the split and the model, no step. A first build on the other study warms the
        # imports; then the cache of this one is built, and the last call finds it built
        config = TrainConfig(data=[str(scratch / "study")], out=str(scratch / "run"), cache=str(scratch / "cache"),
                             image_size=SIZE, width=WIDTH, latent=LATENT, beta=1.0, epochs=0, batch_size=6,
                             val_fraction=0.5, device="cpu", precision="fp32", workers=1, quiet=True,
                             tensorboard=False, force=True)  # fmt: skip
        train(replace(config, data=[str(scratch / "study0")], cache=str(scratch / "cache0")))
        cpu = time.process_time()
        train(config)
        with_cache_build = time.process_time() - cpu
        cpu = time.process_time()
        train(config)
        cached = time.process_time() - cpu
        figures["cache_cpu_s_per_slice"] = max(0.0, with_cache_build - cached) / (PATIENTS * SLICES)
        summary = train(replace(config, epochs=1))  # a checkpoint to export (fp32: bf16 is emulated on this CPU)
        figures["cpu_train_images_per_s_256_fp32"] = summary["metrics"]["images_per_s"]

        wall, cpu = _timed_child([sys.executable, "-m", "export", str(scratch / "run"), "--out", str(scratch / "model"),
                                  "--fp16", "--force", "--validation-data", str(scratch / "study" / "PHANTOM-0001")])
        figures["export_s"] = {"seconds": cpu, "wall_seconds": wall, "image_size": SIZE, "width": WIDTH,
                               "fp16": True, "real_slices": SLICES}  # fmt: skip
    figures["flops_per_image"] = _flops()
    figures["machine"] += f", {os.getloadavg()[0]:.1f} at the end"
    path = Path(__file__).resolve().with_name("cpu_figures.json")
    path.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
