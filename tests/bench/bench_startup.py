"""Start-up of every ctgen command against the floor of its unavoidable imports. Not collected by pytest.

    python tests/bench/bench_startup.py [--runs 5] [--model models/default]

A shell loop that calls ctgen once per file pays the start-up every time. The floor of a command is
``python -c "import numpy, onnxruntime"`` (plus pydicom for commands that read DICOM): what no ctgen could
avoid. Each figure is the median (and min-max) of ``--runs`` runs, all measured in this one run, one after
another, round-robin; the gap is the command's median minus its floor's. Rows marked "Typer path" run the same
command line with CTGEN_NO_FAST_PATH=1 (see ctgen.cli.fast). One unmeasured warm-up run per command first (bytecode
caches, the page cache), as in a shell loop over many files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# as a user's shell has it: bytecode caches written and used (PYTHONDONTWRITEBYTECODE, set in some CI and
# container images, makes every run compile ctgen's sources again: 50-60 ms here)
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
FLOORS = {"numpy + onnxruntime": "import numpy, onnxruntime",
          "numpy + onnxruntime + pydicom": "import numpy, onnxruntime, pydicom"}


def timed(commands: dict[str, tuple[list[str], dict[str, str]]], cwd: Path, runs: int) -> dict[str, list[float]]:
    """Seconds per run of each command; the runs go round-robin (one of each, then again) so that a change in
    the machine's load while the benchmark runs touches every command alike."""
    def once(command: list[str], extra: dict[str, str]) -> float:
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env={**ENV, **extra}, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    for command, extra in commands.values():  # warm-up
        once(command, extra)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (command, extra) in commands.items():
            times[name].append(once(command, extra))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default=str(REPO / "models" / "default"))
    args = parser.parse_args()
    import pydicom

    from ctgen.examples import example_path

    slice_a, slice_b = str(example_path("a")), str(example_path("b"))
    ctgen = [sys.executable, "-m", "ctgen"]
    commands = {  # name -> (argv, floor)
        "ctgen --version": (["--version"], None),
        "ctgen --help": (["--help"], None),
        "sample --n 1 --out x.png": (["sample", "--n", "1", "--out", "x.png", "--force", "-m", args.model],
                                     "numpy + onnxruntime"),
        "decode z.csv --out d.png": (["decode", "z.csv", "--out", "d.png", "--force", "-m", args.model],
                                     "numpy + onnxruntime"),
        "encode one.dcm (uncompressed)": (["encode", "plain.dcm", "-m", args.model], "numpy + onnxruntime + pydicom"),
        "encode one.dcm (JPEG 2000)": (["encode", slice_a, "-m", args.model], "numpy + onnxruntime + pydicom"),
        "traverse one.dcm --units 0-4": (["traverse", slice_a, "--units", "0-4", "--force", "-m", args.model],
                                         "numpy + onnxruntime + pydicom"),
        "interpolate a.dcm b.dcm": (["interpolate", slice_a, slice_b, "--force", "-m", args.model],
                                    "numpy + onnxruntime + pydicom"),
        "reconstruct one.dcm": (["reconstruct", slice_a, "--out", "rec/", "--force", "-m", args.model],
                                "numpy + onnxruntime + pydicom"),
        "units": (["units", "-m", args.model], None),
        # the same command lines through the Typer app (CTGEN_NO_FAST_PATH=1): what the fast path saves
        "sample --n 1 --out x.png (Typer path)": (["sample", "--n", "1", "--out", "x.png", "--force", "-m", args.model],
                                                  "numpy + onnxruntime"),
        "encode one.dcm (uncompressed, Typer path)": (["encode", "plain.dcm", "-m", args.model],
                                                      "numpy + onnxruntime + pydicom"),
        "info": (["info", "-m", args.model], "numpy + onnxruntime + pydicom"),
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        latent_size = int(__import__("json").loads((Path(args.model) / "model.json").read_text())["latent_size"])
        plain = pydicom.dcmread(slice_a)
        plain.decompress()  # the example as native pixel data: no decoder plug-in to import
        plain.save_as(work / "plain.dcm")
        (work / "z.csv").write_text(",".join(["0"] * latent_size) + "\n")
        typer_path = {"CTGEN_NO_FAST_PATH": "1"}
        measured = timed({**{f"floor {name}": ([sys.executable, "-c", code], {}) for name, code in FLOORS.items()},
                          **{name: (ctgen + argv, typer_path if "Typer path" in name else {})
                             for name, (argv, _) in commands.items()}}, work, args.runs)
        floors = {name: measured[f"floor {name}"] for name in FLOORS}
        results = {name: measured[name] for name in commands}
    print(f"start-up, median (min-max) of {args.runs} runs, seconds; python {sys.version.split()[0]}")
    for name, times in floors.items():
        print(f"  floor {name:<34} {statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})")
    for name, (argv, floor) in commands.items():
        times = results[name]
        median = statistics.median(times)
        gap = f"  gap {median - statistics.median(floors[floor]):+.3f} over {floor}" if floor else ""
        print(f"  {name:<40} {median:.3f} ({min(times):.3f}-{max(times):.3f}){gap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
