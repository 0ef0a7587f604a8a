"""ctgen decode: latent vectors back to CT slices."""

from __future__ import annotations

from typing import Annotated

import typer

from ctgen.cli.actions.decode import decode as run_decode
from ctgen.cli.options import (
    BatchOption,
    DeviceOption,
    ForceOption,
    FormatOption,
    JsonOption,
    ModelOption,
    PerFileOption,
    QuietOption,
    WindowOption,
)


def decode(
    latents: Annotated[
        str,
        typer.Argument(metavar="LATENTS", help="A .npy, .npz, .csv or JSON lines file (as written by encode), "
                       "or - for JSON lines/CSV on stdin.", show_default=False),
    ],
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", show_default=False, rich_help_panel="Output",
                     help="Labelled grid .png (up to 1024 images), .npy stack in HU (N, S, S), or a folder (DIR/ "
                          "gets decoded.png). Without --out and --per-file: decoded.png."),
    ] = None,
    per_file: PerFileOption = None,
    file_format: FormatOption = "png",
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    any_model: Annotated[
        bool, typer.Option("--any-model", help="Decode latents that their file says another model wrote (a "
                           "warning instead of an error).")
    ] = False,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Decode latent vectors to CT slices: a grid PNG (decoded.png) and/or one file per vector.

    Every vector must have the model's latent size and finite values, and come from this model: latents
    whose file names another model (as encode records it in .npz, .csv and .jsonl) are refused unless
    --any-model is given; files that name no model are taken as they are. Per-file outputs are named
    decoded_00000.png, … in input order (as DICOM, each its own series). Pipes:
    ctgen encode scans/ | ctgen decode - -o recon.png
    """
    run_decode(**locals())
