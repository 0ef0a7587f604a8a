"""ctgen sample: draw latents from the prior and decode them."""

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
    SeedOption,
    WindowOption,
)


def sample(
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of samples.")] = 16,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", min=0.0, help="Prior standard deviation T (lower: more typical).")
    ] = 1.0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Labelled grid .png (up to 1024 samples), .npy stack of all samples in HU (N, S, S), or a folder. "
            "Without --out and --per-file: samples.png.",
            show_default=False,
            rich_help_panel="Output",
        ),
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
    """Draw N latents from the prior N(0, T²) and decode them to CT slices.

    Writes a labelled grid PNG (samples.png) and/or one file per sample with --per-file
    (sample_00000.png, …). Decodes in batches: --n 10000 --per-file runs in flat memory.
    The same --seed gives byte-identical files.
    """
    from ctgen.latent import sample_prior
    from ctgen.cli.commands._images import ImageOutputs, stream_decode
    from ctgen.outputs import Run, check_targets
    from ctgen.render import parse_window

    with Run("sample", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        vae = run.load_model(model, device)
        width = max(5, len(str(n - 1)))
        names = [f"sample_{index:0{width}d}" for index in range(n)]
        outputs = ImageOutputs(run, vae, out=out, per_file=per_file, file_format=file_format,
                               default_name="samples.png", names=names, window=display,
                               action=f"sample (prior, seed {seed}, temperature {temperature:g})")
        check_targets(outputs.targets, force=force)
        latents = sample_prior(n, vae.latent_size, seed=seed, temperature=temperature)
        with outputs:
            stream_decode(run, vae, latents, [outputs], batch_size=batch_size, description="sampling")
        outputs.finish(title=f"{vae.card.get('name')} · seed {seed} · T {temperature:g}", what="samples")
        run.finish(n=n, seed=seed, temperature=temperature)
