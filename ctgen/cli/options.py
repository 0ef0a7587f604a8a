"""Options shared by several commands (Annotated aliases; only Typer is imported here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

_COMMON = "Common options"
_OUTPUT = "Output"

# The range of every numeric option, declared with the option (Typer's min/max, which the fast path's table in
# fast_spec.py copies): a value outside is a usage error naming the option, before anything is read, allocated
# or computed (a seed numpy refuses, --n that overflows, 10^9 traversal steps, an offset of 1e308).
BOUNDS: dict[str, dict[str, float]] = {
    "seed": {"min": 0, "max": 2**32 - 1},  # numpy takes any non-negative integer; 32 bits, as most tools
    "n": {"min": 1, "max": 10**6},  # streamed, but each file still costs about 0.6 kB of names and records
    "temperature": {"min": 0.0, "max": 100.0},  # prior standard deviations (0: the prior's means)
    "traverse_steps": {"min": 1, "max": 1000},
    "interpolate_steps": {"min": 2, "max": 1000},
    "batch_size": {"min": 1, "max": 4096},
    "slice": {"min": 0, "max": 2**31 - 1},
    "max_slices": {"min": 1, "max": 10**7},
    "diff_range": {"min": 1.0, "max": 10000.0},  # HU
    "max_pixels": {"min": 1, "max": 2**40},
    "max_tilt": {"min": 0.0, "max": 90.0},  # degrees
    "port": {"min": 0, "max": 65535},
}

Device = Literal["auto", "cpu", "cuda"]
FileFormat = Literal["png", "dcm", "npy"]

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar="CTGEN_MODEL",
        metavar="NAME|PATH",
        help="A model folder, or a NAME looked up in this order: ./models/NAME (working folder), then the "
             "shipped models.",
        rich_help_panel=_COMMON,
        show_default="default",
    ),
]
DeviceOption = Annotated[
    Device,
    typer.Option(
        "--device",
        envvar="CTGEN_DEVICE",
        help="auto: CUDA when it really loads, else CPU; cuda: fail if CUDA cannot be used.",
        rich_help_panel=_COMMON,
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress, notes or tables on stderr.", rich_help_panel=_COMMON)
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print a JSON summary of what was written on stdout.", rich_help_panel=_COMMON),
]
ForceOption = Annotated[
    bool, typer.Option("--force", "-f", help="Overwrite existing output files.", rich_help_panel=_COMMON)
]
WindowOption = Annotated[
    str,
    typer.Option(
        "--window",
        "-w",
        metavar="brain|subdural|bone|C,W",
        help="Display window of PNG/GIF outputs: a preset or CENTER,WIDTH in HU.",
        rich_help_panel=_COMMON,
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", **BOUNDS["seed"], help="Random seed: the same seed gives the same bytes.",
                      rich_help_panel=_COMMON)
]
BatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        **BOUNDS["batch_size"],
        help="Images per inference batch.",
        rich_help_panel=_COMMON,
        show_default="16 of 128² on the CPU, fewer for larger images; the model's choice on CUDA",
    ),
]
PerFileOption = Annotated[
    Path | None,
    typer.Option(
        "--per-file",
        metavar="DIR",
        help="Also write one file per image into DIR (see --format).",
        rich_help_panel=_OUTPUT,
        file_okay=False,
    ),
]
FormatOption = Annotated[
    FileFormat,
    typer.Option(
        "--format",
        help="Format of --per-file files: png (windowed 8-bit), dcm (derived CT series), npy (float32 HU).",
        rich_help_panel=_OUTPUT,
    ),
]
SkipBadOption = Annotated[
    bool,
    typer.Option(
        "--skip-bad",
        help="Report unreadable slices on stderr and go on; exit 1 at the end if any failed.",
    ),
]
SliceOption = Annotated[
    int | None,
    typer.Option(
        "--slice",
        **BOUNDS["slice"],
        metavar="K",
        help="Slice K (0-based) of a NIfTI volume (axial, inferior first) or frame K of a multi-frame DICOM file; "
             "or name it FILE#K.",
        show_default="the middle one (n // 2), with a note",
    ),
]
