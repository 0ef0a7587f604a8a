"""ctgen edit: set bound factors of a slice in their units of measure (rotation in degrees, sizes in mm)."""

from __future__ import annotations

from typing import Annotated

import typer

from ctgen.cli.actions.edit import edit as run_edit
from ctgen.cli.options import (
    DeviceOption,
    ForceOption,
    JsonOption,
    ModelOption,
    QuietOption,
    SliceOption,
    WindowOption,
)


def edit(
    slice_path: Annotated[str, typer.Argument(metavar="SLICE.dcm", help="Slice to edit (a file, or VOLUME#K).",
                                              show_default=False)],
    settings: Annotated[
        list[str],
        typer.Option("--set", metavar="FACTOR=VALUE", show_default=False,
                     help="A bound factor (ctgen info lists them) in its unit of measure: FACTOR=40 sets it to 40, "
                          "FACTOR=+10 / FACTOR=-10 changes the model's reading of the slice by that much, "
                          "FACTOR==-10 sets a negative value. Repeat for several factors."),
    ],
    slice_index: SliceOption = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", show_default="edited.png", rich_help_panel="Output",
                     help=".png (original | reconstruction | edited, labelled), .dcm (the edited slice as a derived "
                          "CT image with provenance), .npy (float32 HU on the model grid), or a folder "
                          "(DIR/ gets edited.png)."),
    ] = None,
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Set measured factors of a slice: encode it, set each named bound unit to the value asked for, decode.

    Only units the model was trained to bind to a factor (--bind; listed by ctgen info and ctgen units) can be
    set. A factor's value is read off the unit as mean + std * z (the card's binding); a relative change starts
    from the model's reading of the slice. --json reports, per bound factor, the model's reading before and
    after and the factor measured on the input and on the output (the same measurement as ctgen scan; null
    for a series factor, which one slice cannot measure). Of a volume or multi-frame file, the middle slice
    unless --slice.
    """
    run_edit(**locals())
