"""ctgen interpolate: walk the latent space between two slices."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from ctgen.cli.actions.interpolate import interpolate as run_interpolate
from ctgen.cli.options import (
    BOUNDS,
    DeviceOption,
    ForceOption,
    FormatOption,
    JsonOption,
    ModelOption,
    PerFileOption,
    QuietOption,
    SliceOption,
    WindowOption,
)
from ctgen.defaults import DEFAULT_INTERPOLATION, DEFAULT_INTERPOLATION_STEPS


def interpolate(
    first: Annotated[str, typer.Argument(metavar="A.dcm", help="Slice at the start (a file, or VOLUME#K).",
                                         show_default=False)],
    second: Annotated[str, typer.Argument(metavar="B.dcm", help="Slice at the end.", show_default=False)],
    slice_index: SliceOption = None,
    steps: Annotated[
        int, typer.Option("--steps", "-s", **BOUNDS["interpolate_steps"],
                          help="Images in the strip, both ends included.")
    ] = DEFAULT_INTERPOLATION_STEPS,
    method: Annotated[
        Literal["slerp", "lerp"],
        typer.Option("--method", help="Great circle (keeps norms typical of the prior) or straight line."),
    ] = DEFAULT_INTERPOLATION,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", help="Strip .png, or a folder (DIR/ gets interpolation.png).",
                     show_default="interpolation.png", rich_help_panel="Output"),
    ] = None,
    gif: Annotated[
        bool, typer.Option("--gif", help="Also write an animated GIF next to the strip (same name, .gif).",
                           rich_help_panel="Output")
    ] = False,
    with_originals: Annotated[
        bool, typer.Option("--with-originals", help="Put the two input slices beside the strip's ends.",
                           rich_help_panel="Output")
    ] = False,
    per_file: PerFileOption = None,
    file_format: FormatOption = "png",
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode two slices (their means), interpolate between them and decode.

    Writes a strip PNG (interpolation.png) whose ends are the two reconstructions; --gif adds an
    animation (interpolation.gif), --with-originals the inputs, --per-file one file per step (as DICOM,
    one ordered series that says what it is).
    """
    run_interpolate(**locals())
