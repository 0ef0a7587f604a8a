"""ctgen sample: draw latents from the prior and decode them."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from ctgen.cli.actions.sample import sample as run_sample
from ctgen.cli.options import (
    BOUNDS,
    BatchOption,
    DeviceOption,
    ForceOption,
    FormatOption,
    JsonOption,
    ModelOption,
    PerFileOption,
    QuietOption,
    SeedOption,
    WindowOption,
)


def sample(
    n: Annotated[int, typer.Option("--n", "-n", **BOUNDS["n"], help="Number of samples.")] = 16,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", **BOUNDS["temperature"],
                            help="Prior standard deviation T (lower: more typical).")
    ] = 1.0,
    prior: Annotated[
        Literal["auto", "fitted", "standard"],
        typer.Option("--prior", help="fitted: the mixture fitted to the training slices' codes (samples that look "
                     "like heads); standard: N(0, I); auto: fitted when the model has one."),
    ] = "auto",
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", show_default=False, rich_help_panel="Output",
                     help="Labelled grid .png (up to 1024 samples), .npy stack of all samples in HU (N, S, S), or a "
                          "folder (DIR/ gets samples.png). Without --out and --per-file: samples.png."),
    ] = None,
    per_file: PerFileOption = None,
    file_format: FormatOption = "png",
    seed: SeedOption = 0,
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Draw N latents from the prior (the fitted mixture, or N(0, T²)) and decode them to CT slices.

    Writes a labelled grid PNG (samples.png) and/or one file per sample with --per-file
    (sample_00000.png, …; as DICOM each sample is its own series). Decodes in batches: --n 10000
    --per-file runs in flat memory. The same --seed gives byte-identical files.
    """
    run_sample(**locals())
