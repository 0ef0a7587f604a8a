"""Training throughput: our loop (preprocessed cache in memory) vs a plain DataLoader loop, and each
objective's throughput as a ratio to betavae's.

    python tests/bench/bench_train.py [--data DIR] [--patients 6 --slices 12] [--image-size 128 --width 32
        --latent 50 --batch-size 32 --epochs 3] [--device cpu|cuda] [--precision auto|fp32|bf16]
        [--objectives betavae,tcvae,factorvae,pairs] [--no-reference]

The reference loop is how the peer repositories load data: a torch Dataset that reads and preprocesses
one DICOM file per item (ctgen.io.dicom.read_slice + ctgen.images.preprocess.to_model, so the pixels are the same
as ours), a DataLoader with shuffling, 2 workers, re-created every epoch. Both loops train the same model
with the same optimizer, loss, batch size and number of steps; images/s counts epochs 2.. (epoch 1 warms
up). Ours also pays a one-time cache build, reported separately and in the end-to-end figure.

Objectives run our loop on the same data and config (betavae's figures are the "ours" of the comparison
above); images/s counts every image a step encodes (pairs: both slices of each pair), so the ratio is the
cost per image of the objective's extra work (the TC estimator, the discriminator, the pairing).

The runs alternate (betavae, tcvae, ..., reference, betavae, ...) for --rounds rounds, and both wall-clock
images/s and CPU milliseconds per image (training process plus, for the reference, its loader workers) are
reported: on a shared machine the wall clock swings with other load, CPU time per image measures the work
itself. Not collected by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from ctgen.io.dicom import iter_dicom_files, read_slice  # noqa: E402
from ctgen.images.preprocess import to_model  # noqa: E402
from train.data import single_threaded_blas  # noqa: E402
from train.model import BetaVAE, vae_loss  # noqa: E402
from train.train import TrainConfig, train  # noqa: E402


class DicomSlices(Dataset):
    """One DICOM file per item, read and preprocessed on every access."""

    def __init__(self, files, grid):
        self.files, self.grid = files, grid

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        item = read_slice(self.files[index])
        return torch.from_numpy(to_model(item.hu, item.spacing_mm, self.grid))[None]  # (1, S, S)


def _worker_init(_worker_id: int) -> None:
    single_threaded_blas()  # same BLAS setting as our cache workers, so the comparison is fair


def reference_loop(cfg: TrainConfig, files: list[Path], device: torch.device) -> dict:
    torch.manual_seed(cfg.seed)
    model = BetaVAE(cfg.model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    dataset = DicomSlices(files, cfg.grid)
    epochs = []
    started_all = time.perf_counter()
    for epoch in range(cfg.epochs):
        cpu = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=2, drop_last=True,
                            pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                            generator=torch.Generator().manual_seed(epoch))  # fmt: skip
        started, seen = time.perf_counter(), 0
        model.train()
        for images in loader:
            images = images.to(device, non_blocking=True)
            with autocast():
                recon, mu, logvar = model(images)
            terms = vae_loss(images, recon, mu, logvar, beta=cfg.beta)
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            seen += len(images)
        terms.loss.item()
        wall = time.perf_counter() - started
        del loader  # workers exit, so their CPU time is in RUSAGE_CHILDREN
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = time.process_time() - cpu[0] + children.ru_utime + children.ru_stime - cpu[1].ru_utime - cpu[1].ru_stime
        epochs.append({"images": seen, "seconds": wall, "cpu_seconds": cpu_s})
    return {"epochs": epochs, "wall_s": time.perf_counter() - started_all}


def our_loop(cfg: TrainConfig) -> dict:
    started = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - started
    logged = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    epochs = [{"images": round(m["images_per_s"] * m["train_seconds"]), "seconds": m["train_seconds"],
               "cpu_seconds": m["train_cpu_seconds"]} for m in logged]  # fmt: skip
    return {"epochs": epochs, "wall_s": wall}


def summarise(runs: list[dict]) -> dict:
    """Median over rounds of steady-state (epochs 2..) images/s and CPU ms per image."""
    rates, cpu_ms = [], []
    for run in runs:
        steady = run["epochs"][1:] or run["epochs"]
        images = sum(e["images"] for e in steady)
        rates.append(images / sum(e["seconds"] for e in steady))
        cpu_ms.append(1000 * sum(e["cpu_seconds"] for e in steady) / images)
    return {"images_per_s": round(statistics.median(rates), 2), "cpu_ms_per_image": round(statistics.median(cpu_ms), 1),
            "rounds_images_per_s": [round(r, 2) for r in rates], "wall_s": [round(r["wall_s"], 1) for r in runs]}


def make_study(out: Path, patients: int, slices: int) -> Path:
    try:
        from train.phantom import generate_study

        generate_study(out, patients=patients, slices=slices, seed=0, contact_sheet=False)
    except ImportError:
        from tests.test_train_data import write_synthetic_study

        write_synthetic_study(out, patients=patients, slices=slices, size=512)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--latent", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="for both loops")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each loop")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--objectives", default="betavae,tcvae,factorvae,pairs",
                        help="objectives to time (comma separated; betavae is always included)")
    parser.add_argument("--no-reference", dest="reference", action="store_false", help="skip the DataLoader loop")
    args = parser.parse_args()
    objectives = ["betavae"] + [name for name in args.objectives.split(",") if name and name != "betavae"]
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data is None:
            started = time.perf_counter()
            args.data = make_study(tmp / "study", args.patients, args.slices)
            print(f"study: {args.patients} patients x {args.slices} slices in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)  # fmt: skip
        cfg = TrainConfig(
            data=[str(args.data)], out=str(tmp / "ours"), cache=str(tmp / "cache"), image_size=args.image_size,
            width=args.width, latent=args.latent, batch_size=args.batch_size, epochs=args.epochs, beta=4.0,
            val_fraction=0.0, device=args.device, precision=args.precision, quiet=True, tensorboard=False,
        )  # fmt: skip
        files = sorted(iter_dicom_files([args.data]))

        started = time.perf_counter()
        from train.data import build_cache

        build_cache(cfg.data, cfg.cache, cfg.grid, workers=cfg.workers)
        cache_s = time.perf_counter() - started

        runs: dict[str, list[dict]] = {name: [] for name in objectives}
        reference_runs = []
        for _round in range(args.rounds):
            for name in objectives:
                runs[name].append(our_loop(replace(cfg, force=True, objective=name, out=str(tmp / name))))
            if args.reference:
                reference_runs.append(reference_loop(cfg, files, device))

    by_objective = {name: summarise(found) for name, found in runs.items()}
    ours = by_objective["betavae"]
    for figures in by_objective.values():
        figures["ratio_to_betavae"] = round(figures["images_per_s"] / ours["images_per_s"], 2)
        figures["cpu_ratio_to_betavae"] = round(ours["cpu_ms_per_image"] / figures["cpu_ms_per_image"], 2)
    images = len(files) // cfg.batch_size * cfg.batch_size
    result = {
        "device": str(device), "torch_threads": torch.get_num_threads(), "files": len(files),
        "config": {"image_size": cfg.image_size, "width": cfg.width, "latent": cfg.latent, "precision": cfg.precision,
                   "batch_size": cfg.batch_size, "epochs": cfg.epochs, "images_per_epoch": images},
        "cache_build_s": round(cache_s, 2),
        "ours": ours,
        "objectives": by_objective,
        "load_average": open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else None,
    }  # fmt: skip
    if reference_runs:
        reference = summarise(reference_runs)
        result |= {"reference": reference,
                   "ratio_images_per_s": round(ours["images_per_s"] / reference["images_per_s"], 2),
                   "ratio_cpu_per_image": round(reference["cpu_ms_per_image"] / ours["cpu_ms_per_image"], 2)}  # fmt: skip
    print(json.dumps(result, indent=1))
    if reference_runs:
        print(f"ours {ours['images_per_s']:.1f} img/s vs plain DataLoader loop {reference['images_per_s']:.1f} img/s: "
              f"{ours['images_per_s'] / reference['images_per_s']:.2f}x (CPU work per image: "
              f"{reference['cpu_ms_per_image'] / ours['cpu_ms_per_image']:.2f}x)", file=sys.stderr)  # fmt: skip
    print("images/s per objective, as a ratio to betavae (by CPU time per image): " + ", ".join(
        f"{name} {figures['images_per_s']:.1f} ({figures['ratio_to_betavae']:.2f}x, {figures['cpu_ratio_to_betavae']:.2f}x)"
        for name, figures in by_objective.items()), file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
