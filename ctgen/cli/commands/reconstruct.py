"""ctgen reconstruct: how well the model reproduces given slices."""

from __future__ import annotations

from typing import Annotated

import typer

from ctgen.cli.actions.reconstruct import reconstruct as run_reconstruct
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
    SkipBadOption,
    WindowOption,
)


def reconstruct(
    inputs: Annotated[list[str], typer.Argument(metavar="FILES/DIRS", help="DICOM files, NIfTI volumes or folders "
                                                "(recursive).", show_default=False)],
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", show_default="reconstructions/", rich_help_panel="Output",
                     help="Folder for one panel PNG per slice (<name>.png), or a .png file for a single input."),
    ] = None,
    diff_range: Annotated[
        float, typer.Option("--diff-range", **BOUNDS["diff_range"],
                            help="HU difference shown as black/white in the difference panel.")
    ] = 100.0,
    per_file: PerFileOption = None,
    file_format: FormatOption = "npy",
    skip_bad: SkipBadOption = False,
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode and decode slices: original | reconstruction | difference panels, one PNG per slice.

    Errors per slice (MAE and RMSE in HU, inside the head: original > -500 HU) are computed against what
    the model can reach (the original through its HU map), shown as a table on stderr and in --json.
    Every axial slice of a NIfTI volume and every frame of a multi-frame file is reconstructed (FILE#K,
    panels NAME_K.png). --per-file also writes the reconstructions themselves (npy in HU by default).
    """
    run_reconstruct(**locals())
