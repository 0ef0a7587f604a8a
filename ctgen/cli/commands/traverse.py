"""ctgen traverse: one latent unit at a time, around a slice's code or the prior mean."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ctgen.cli.actions.traverse import traverse as run_traverse
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
from ctgen.defaults import DEFAULT_TRAVERSE_RANGE, DEFAULT_TRAVERSE_STEPS, DEFAULT_TRAVERSE_UNITS


def traverse(
    slice_path: Annotated[
        str | None,
        typer.Argument(metavar="[SLICE.dcm]", help="Slice to traverse around (a file, or VOLUME#K).",
                       show_default="the prior mean, z = 0"),
    ] = None,
    slice_index: SliceOption = None,
    units: Annotated[
        str, typer.Option("--units", "-u", metavar="LIST|topK|all|NAMES",
                          help='Rows: units as "0-4,7", "top5" (highest KL on the card), "all", or factor names: '
                               'a bound unit\'s factor ("rotation_deg,head_width_max_mm", moved in its unit of '
                               'measure), else a factor the card names ("level"). Names and numbers may mix.')
    ] = DEFAULT_TRAVERSE_UNITS,
    value_range: Annotated[
        list[str] | None,
        typer.Option("--range", "-r", metavar="N|FACTOR=LO:HI|FACTOR=N",
                     help="N: offsets -N..+N standard deviations on every row (> 0, at most 100; a bound unit moves "
                          "N of its factor's training standard deviations, labelled in its unit). FACTOR=LO:HI: a "
                          "bound factor from LO to HI in its unit of measure (rotation_deg=-20:20). FACTOR=N: ± N "
                          "in its unit around the model's reading of the slice (rotation_deg=15). Repeat the "
                          "option or separate with commas.",
                     show_default=f"{DEFAULT_TRAVERSE_RANGE:g}"),
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", "-s", **BOUNDS["traverse_steps"],
                          help="Columns: offsets from -range to +range (odd; even rounds up).")
    ] = DEFAULT_TRAVERSE_STEPS,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", help="Grid .png, or a folder (DIR/ gets traverse.png).",
                     show_default="traverse.png", rich_help_panel="Output"),
    ] = None,
    gif_dir: Annotated[
        Path | None,
        typer.Option("--gif-dir", metavar="DIR", help="Also write one animated GIF per unit: DIR/u03.gif, …",
                     file_okay=False, rich_help_panel="Output"),
    ] = None,
    per_file: PerFileOption = None,
    file_format: FormatOption = "png",
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Vary one latent unit per row around the encoded slice (or the prior mean).

    Rows are units, labelled with their KL from the model card ("u3 (KL 1.2)"); columns are offsets
    -range … +range; the middle column is the unchanged code, i.e. the reconstruction. A unit bound to a
    measured factor (ctgen info) is labelled in the factor's unit: its row names the factor, each picture
    the change and the value it stands for ("+15° (16.2°)"); --json lists the values per row. Writes
    traverse.png; --gif-dir adds one animation per unit, --per-file one file per cell (as DICOM, one
    ordered series per unit).
    """
    run_traverse(**locals())
