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
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Decode latent vectors to CT slices: a grid PNG (decoded.png) and/or one file per vector.

    Every vector must have the model's latent size and finite values; per-file outputs are named
    decoded_00000.png, … in input order (as DICOM, each its own series). Pipes:
    ctgen encode scans/ | ctgen decode - -o recon.png
    """
    from ctgen.cli.run import Run, check_targets, resolve_out
    from ctgen.latent_io import check_latents, read_latents
    from ctgen.render import parse_window
    from ctgen.writers import ImageOutputs

    with Run("decode", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        target = resolve_out(out, "decoded.png", (".png", ".npy")) if out is not None or per_file is None else None
        vectors = read_latents(latents)
        source = "<stdin>" if latents == "-" else latents
        generator = run.load_generator(model, device)
        check_latents(vectors, generator.latent_size, source)
        width = max(5, len(str(len(vectors) - 1)))
        outputs = ImageOutputs(generator, out=target, per_file=per_file, file_format=file_format,
                               names=[f"decoded_{index:0{width}d}" for index in range(len(vectors))],
                               window=display, action=f"decode {Path(source).name}", force=force)
        check_targets(outputs.targets, force=force)
        with outputs, run.progress(len(vectors), "decoding") as advance:
            for start, hu in generator.iter_decode(vectors, batch_size=batch_size):
                outputs.write(start, hu)
                advance(len(hu))
        run.wrote(outputs.finish(title=f"decoded {Path(source).name} · {generator.card.name}"), "images")
        run.finish(count=len(vectors), source=source)
