"""ctgen encode: DICOM slices to latent vectors, for many files at a time."""

from __future__ import annotations

from typing import Annotated

import typer

from ctgen.cli.actions.encode import encode as run_encode
from ctgen.cli.options import (
    BatchOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    ModelOption,
    QuietOption,
    SkipBadOption,
)


def encode(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="FILES/DIRS/-", help="DICOM files, NIfTI volumes, folders (recursive), or - to read "
                       "paths from stdin.", show_default=False),
    ],
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="PATH", show_default=False, rich_help_panel="Output",
                     help="Write .npz (files, mu[, logvar]), .npy (mu), .csv or .jsonl instead of JSON lines on "
                          "stdout; a folder (DIR/) gets latents.npz. All but .npy record the model, which decode "
                          "checks."),
    ] = None,
    logvar: Annotated[bool, typer.Option("--logvar", help="Also write the posterior log-variances.")] = False,
    factors: Annotated[
        bool, typer.Option("--factors", help="Also write the model's reading of each bound factor, in its unit of "
                                             "measure (ctgen info lists them): a key per factor on each JSON line "
                                             '("rotation_deg": 3.2), a CSV column, an .npz array. decode ignores '
                                             "them.")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option("--shard", metavar="K/N", help="Encode only shard K of N (1-based) of the sorted file list: "
                     "contiguous blocks, so shards 1..N concatenated give the whole list.", show_default=False),
    ] = None,
    skip_bad: SkipBadOption = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode CT slices to latent vectors (the posterior mean mu; --logvar adds log-variances).

    Without --out, prints JSON lines on stdout: {"file": …, "mu": […], "model": …, "encoder_sha256": …}
    (the model that wrote them, which decode checks). Rows follow the sorted file
    list; every axial slice of a NIfTI volume and every frame of a multi-frame file is encoded, named
    FILE#K. A slice unlike the model's training data (field of view, spacing, no brain, not axial) is
    encoded with a warning on stderr, recorded per slice in the output ("warnings") and in --json. A bad
    file stops the run with exit 1 and nothing written; with --skip-bad it is reported ("ctgen: skipped
    FILE: reason"), the rest is written, and the exit status is 1.
    """
    run_encode(**locals())
