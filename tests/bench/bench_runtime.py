"""Runtime benchmarks of the ctgen command line (ONNX Runtime) against PyTorch eager. Not collected by pytest.

    python tests/bench/bench_runtime.py                      # random default-config model (128², L 50, width 32)
    python tests/bench/bench_runtime.py --model models/default [--checkpoint run/checkpoint_best.pt]

Needs the train extra (torch) for the PyTorch side. Prints every figure and the ratios against the targets
of issue 6: ORT >= 2x eager at batch 16, `ctgen sample --n 16` >= 3x faster than a PyTorch script,
`ctgen --help` < 0.3 s, `ctgen encode` >= 80% of the encoder's pure throughput, `ctgen sample --n 10000
--per-file` under 500 MB peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the ctgen CLI does (ctgen/cli.py main)

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def build_random_model(work: Path) -> tuple[Path, Path]:
    """A random BetaVAE of the default config, checkpointed like train.train and exported like export."""
    import torch

    from ctgen.images.preprocess import Grid
    from export import export_model
    from train.model import BetaVAE, VAEConfig

    model_dir, run = work / "models" / "bench", work / "run"
    if (model_dir / "model.json").is_file():
        return model_dir, run / "checkpoint_best.pt"
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = VAEConfig(image_size=128, latent_size=50, width=32)
    vae = BetaVAE(config).eval()
    checkpoint = {"config": asdict(config), "model": vae.state_dict(), "epoch": 0,
                  "grid": Grid(size=128, spacing_mm=1.875).to_card(), "metrics": {},
                  "command": "random weights (tests/bench/bench_runtime.py)"}
    torch.save(checkpoint, run / "checkpoint_best.pt")
    export_model(run, model_dir, name="bench", command="tests/bench/bench_runtime.py")
    return model_dir, run / "checkpoint_best.pt"


def load_torch_vae(checkpoint_path: Path | None, model_dir: Path):
    """The PyTorch model: the checkpoint's, or (none given) the card's architecture with random weights; speed
    does not depend on the weights' values, so eager is timed on what the exported graphs were made from."""
    import torch

    from train.model import BetaVAE, VAEConfig

    if checkpoint_path is None:
        import json

        architecture = json.loads((model_dir / "model.json").read_text())["architecture"]
        torch.manual_seed(0)
        return BetaVAE(VAEConfig(**architecture["config"])).eval()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    vae = BetaVAE(VAEConfig(**checkpoint["config"]))
    vae.load_state_dict(checkpoint["model"])
    return vae.eval()


def rate(function, count: int, seconds: float = 2.0) -> float:
    """Items per second of ``function()`` (which handles ``count`` items), after a warm-up."""
    for _ in range(3):
        function()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 5:
        function()
        runs += 1
    return runs * count / (time.perf_counter() - start)


def throughput(model_dir: Path, checkpoint: Path | None, rounds: int = 7) -> dict:
    """ORT against PyTorch eager on the same inputs, in ``rounds`` alternating rounds of one second each (eager
    on these 2 cores swings between runs; alternating exposes both sides to the same moments), ratios per round."""
    import statistics

    import torch

    from ctgen.runtime.model import load_model

    onnx_vae = load_model(model_dir, device="cpu")
    torch_vae = load_torch_vae(checkpoint, model_dir)
    size, latent = onnx_vae.grid.size, onnx_vae.latent_size
    rng = np.random.default_rng(0)
    figures = {}
    for batch in (1, 16):
        images = rng.random((batch, 1, size, size), dtype=np.float32)
        z = rng.standard_normal((batch, latent), dtype=np.float32)
        images_t, z_t = torch.from_numpy(images), torch.from_numpy(z)
        with torch.inference_mode():
            for graph, ort_call, torch_call in (("encode", lambda: onnx_vae.encode(images), lambda: torch_vae.encode(images_t)),
                                                ("decode", lambda: onnx_vae.decode(z), lambda: torch_vae.decode(z_t))):
                pairs = [(rate(ort_call, batch, 1.0), rate(torch_call, batch, 1.0)) for _ in range(rounds)]
                figures[(graph, batch)] = pairs
    print(f"\nthroughput, images/s (torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"ORT {onnx_vae.provider}; {rounds} alternating rounds of 1 s, median (min-max))")
    for (graph, batch), pairs in figures.items():
        ort_rates, torch_rates = [p[0] for p in pairs], [p[1] for p in pairs]
        ratios = [o / t for o, t in pairs]
        print(f"  {graph:6s} batch {batch:2d}: ORT {statistics.median(ort_rates):7.1f} ({min(ort_rates):.0f}-{max(ort_rates):.0f})"
              f"  eager {statistics.median(torch_rates):7.1f} ({min(torch_rates):.0f}-{max(torch_rates):.0f})"
              f"  ratio {statistics.median(ratios):4.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
              + ("  (target >= 2.3x)" if batch == 16 and graph == "encode" else ""))
    return figures


def wall(command: list[str], cwd: Path, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=ENV, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


TORCH_SAMPLE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    from PIL import Image
    from train.model import BetaVAE, VAEConfig
    checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    vae = BetaVAE(VAEConfig(**checkpoint["config"]))
    vae.load_state_dict(checkpoint["model"])
    vae.eval()
    lo, hi = checkpoint["grid"]["window_hu"]
    out = Path(sys.argv[2])
    out.mkdir(exist_ok=True)
    z = torch.randn(16, vae.config.latent_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        images = vae.decode(z)[:, 0].numpy()
    hu = lo + images * (hi - lo)
    pixels = np.clip((hu - 0.0) * 255.0 / 80.0, 0, 255).astype(np.uint8)  # brain window 40/80
    for index, tile in enumerate(pixels):
        Image.fromarray(tile).save(out / f"sample_{index:05d}.png")
""")


def end_to_end(model_dir: Path, checkpoint: Path, work: Path) -> dict:
    script = work / "torch_sample.py"
    script.write_text(TORCH_SAMPLE)
    ctgen = [sys.executable, "-m", "ctgen"]
    figures = {
        "help": wall([*ctgen, "--help"], work, 5),
        "version": wall([*ctgen, "--version"], work, 5),
        "sample_grid": wall([*ctgen, "sample", "--n", "16", "-m", str(model_dir), "-o", "grid.png", "-f", "-q"], work),
        "sample_files": wall([*ctgen, "sample", "--n", "16", "-m", str(model_dir), "--per-file", "ort", "-f", "-q"],
                             work),
        "torch_files": wall([sys.executable, str(script), str(checkpoint), str(work / "torch")], work),
    }
    print("\nend to end, best of 3-5 runs (s)")
    print(f"  ctgen --help {figures['help']:.3f} s (target < 0.3 s), --version {figures['version']:.3f} s")
    print(f"  ctgen sample --n 16 (grid PNG)            {figures['sample_grid']:.2f} s")
    print(f"  ctgen sample --n 16 --per-file (16 PNGs)  {figures['sample_files']:.2f} s")
    print(f"  PyTorch script (16 PNGs)                  {figures['torch_files']:.2f} s")
    print(f"  ratio PyTorch / ctgen: {figures['torch_files'] / figures['sample_files']:.2f}x (per-file), "
          f"{figures['torch_files'] / figures['sample_grid']:.2f}x (grid) (target >= 3x)")
    return figures


def phantom_slices(work: Path, count: int) -> Path:
    """``count`` phantom slices (train.phantom, 512² at 0.45 mm); synthetic ellipses if it is unavailable."""
    folder = work / f"phantom_{count}"
    if folder.is_dir() and len(list(folder.rglob("*.dcm"))) >= count:
        return folder
    per_patient = 25
    try:
        from train.phantom.study import generate_study

        start = time.perf_counter()
        generate_study(folder, patients=-(-count // per_patient), slices=per_patient, seed=0, force=True,
                       contact_sheet=False)
        print(f"  wrote phantom slices in {time.perf_counter() - start:.0f} s")
    except ImportError:
        from ctgen.io.dicom import write_series

        yy, xx = np.mgrid[:512, :512]
        for start in range(0, count, per_patient):
            hu = np.full((per_patient, 512, 512), -1000.0, np.float32)
            for index in range(per_patient):
                r = np.hypot((yy - 256 - index) / 200, (xx - 256) / 160)
                hu[index][r < 1] = 1000.0
                hu[index][r < 0.9] = 35.0
            write_series(hu, folder / f"P{start:05d}", spacing_mm=(0.45, 0.45), description="bench",
                         derivation="bench")
    return folder


def encode_gap(model_dir: Path, work: Path, count: int) -> dict:
    from ctgen.io.dicom import iter_dicom_files, read_slice
    from ctgen.runtime.model import load_model
    from ctgen.images.preprocess import to_model

    folder = phantom_slices(work, count)
    files = sorted(iter_dicom_files(folder), key=str)[:count]
    listing = work / "encode_files.txt"
    listing.write_text("\n".join(map(str, files)) + "\n")
    model = load_model(model_dir, device="cpu")
    start = time.perf_counter()
    images = np.stack([to_model(ct.hu, ct.spacing_mm, model.grid) for ct in map(read_slice, files)])[:, None]
    read_rate = len(files) / (time.perf_counter() - start)
    step = model.batch_size  # what ctgen encode feeds ONNX Runtime at a time

    def encode_all() -> None:
        for start in range(0, len(images), step):
            model.encode(images[start : start + step])

    pure = rate(encode_all, len(images), seconds=3.0)
    started = time.perf_counter()
    with open(listing) as stdin:
        subprocess.run([sys.executable, "-m", "ctgen", "encode", "-", "-m", str(model_dir), "-o",
                        str(work / "latents.npz"), "-f", "-q"], stdin=stdin, env=ENV, check=True)
    cli_seconds = time.perf_counter() - started
    startup = wall([sys.executable, "-m", "ctgen", "encode", str(files[0]), "-m", str(model_dir), "-q"], work)
    cli = len(files) / cli_seconds
    cli_steady = len(files) / max(cli_seconds - startup, 1e-9)
    print(f"\nencode {len(files)} phantom slices")
    print(f"  read + preprocess alone, one thread: {read_rate:7.1f} slices/s")
    print(f"  encoder alone (Model.encode, preprocessed, batches of {step}): {pure:7.1f} slices/s")
    print(f"  ctgen encode end to end: {cli_seconds:.2f} s = {cli:7.1f} slices/s -> {cli / pure:.0%} of the encoder"
          f" (target >= 80%)")
    print(f"  less start-up ({startup:.2f} s for one slice): {cli_steady:7.1f} slices/s -> {cli_steady / pure:.0%}")
    return {"read": read_rate, "pure": pure, "cli": cli, "cli_steady": cli_steady}


def sample_memory(model_dir: Path, work: Path, count: int) -> float:
    out = work / "rss"
    shutil.rmtree(out, ignore_errors=True)
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        subprocess.run({[sys.executable, '-m', 'ctgen', 'sample', '--n', str(count), '--per-file', str(out), '-m',
                          str(model_dir), '-q']!r}, check=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], env=ENV, check=True, capture_output=True, text=True)
    peak_mb = int(result.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    print(f"\nctgen sample --n {count} --per-file: peak RSS {peak_mb:.0f} MB (target < 500 MB), "
          f"{time.perf_counter() - start:.1f} s, {len(list(out.iterdir()))} files")
    shutil.rmtree(out, ignore_errors=True)
    return peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: a random default-config model)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint of --model, for the PyTorch side")
    parser.add_argument("--work", type=Path, help="scratch folder, kept for reuse (default: a temporary one)")
    parser.add_argument("--slices", type=int, default=1000, help="phantom slices for the encode benchmark")
    parser.add_argument("--samples", type=int, default=10000, help="samples for the memory benchmark")
    parser.add_argument("--only", nargs="*", choices=["throughput", "end-to-end", "encode", "memory"],
                        default=["throughput", "end-to-end", "encode", "memory"])
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ctgen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        model_dir, checkpoint = build_random_model(work)
    else:  # without --checkpoint, eager runs the card's architecture with random weights (same speed)
        model_dir, checkpoint = args.model.resolve(), args.checkpoint.resolve() if args.checkpoint else None
    print(f"model {model_dir}; {os.cpu_count()} CPUs; work folder {work}")
    if "throughput" in args.only:
        throughput(model_dir, checkpoint)
    if "end-to-end" in args.only and checkpoint is None:
        print("\nend to end against a PyTorch script: needs --checkpoint (skipped)")
    elif "end-to-end" in args.only:
        end_to_end(model_dir, checkpoint, work)
    if "encode" in args.only:
        encode_gap(model_dir, work, args.slices)
    if "memory" in args.only:
        sample_memory(model_dir, work, args.samples)
    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
