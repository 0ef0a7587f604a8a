"""ctgen decode: latent vectors back to CT slices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
        Path | None,
        typer.Option("--out", "-o", help="Labelled grid .png (up to 1024 images), .npy stack in HU (N, S, S), or "
                     "a folder. Without --out and --per-file: decoded.png.", show_default=False,
                     rich_help_panel="Output"),
    ] = None,
    per_file: PerFileOption = None,
    file_format: FormatOption = "png",
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Decode latent vectors to CT slices: a grid PNG (decoded.png) and/or one file per vector.

    Every vector must have the model's latent size and finite values; per-file outputs are named
    decoded_00000.png, … in input order. Pipes: ctgen encode scans/ | ctgen decode - -o recon.png
    """
    from ctgen.cli.commands._latent_files import check_latents, read_latents
    from ctgen.cli.commands._images import ImageOutputs, stream_decode
    from ctgen.outputs import Run, check_targets
    from ctgen.render import parse_window

    with Run("decode", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        vectors = read_latents(latents)
        source = "<stdin>" if latents == "-" else latents
        vae = run.load_model(model, device)
        check_latents(vectors, vae.latent_size, source)
        width = max(5, len(str(len(vectors) - 1)))
        names = [f"decoded_{index:0{width}d}" for index in range(len(vectors))]
        outputs = ImageOutputs(run, vae, out=out, per_file=per_file, file_format=file_format,
                               default_name="decoded.png", names=names, window=display,
                               action=f"decode {Path(source).name}")
        check_targets(outputs.targets, force=force)
        with outputs:
            stream_decode(run, vae, vectors, [outputs], batch_size=batch_size)
        outputs.finish(title=f"decoded {Path(source).name} · {vae.card.get('name')}", what="images")
        run.finish(count=len(vectors), source=source)
