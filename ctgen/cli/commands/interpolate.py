"""ctgen interpolate: walk the latent space between two slices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ctgen.cli.options import (
    DeviceOption,
    ForceOption,
    FormatOption,
    JsonOption,
    ModelOption,
    PerFileOption,
    QuietOption,
    WindowOption,
)


def interpolate(
    first: Annotated[Path, typer.Argument(metavar="A.dcm", help="Slice at the start.", show_default=False)],
    second: Annotated[Path, typer.Argument(metavar="B.dcm", help="Slice at the end.", show_default=False)],
    steps: Annotated[int, typer.Option("--steps", "-s", min=2, help="Images in the strip, both ends included.")] = 8,
    method: Annotated[
        Literal["lerp", "slerp"], typer.Option("--method", help="Straight line or great circle between the means.")
    ] = "lerp",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Strip .png, or a folder.",
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
    animation (interpolation.gif), --with-originals the inputs, --per-file one file per step.
    """
    import numpy as np

    from ctgen.cli.commands._slices import encode_one, frames_loop, load_on_grid
    from ctgen.latent import lerp, slerp
    from ctgen.cli.commands._images import PerFile, tile_scale
    from ctgen.outputs import Run, check_targets, resolve_out
    from ctgen.preprocess import from_model
    from ctgen.render import grid_image, parse_window, save_gif, save_png

    with Run("interpolate", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        strip_path = resolve_out(out, "interpolation.png", (".png",))
        gif_path = strip_path.with_suffix(".gif") if gif else None
        vae = run.load_model(model, device)
        files = None
        if per_file is not None:
            names = [f"interpolation_{index:03d}" for index in range(steps)]
            files = PerFile(per_file, names, file_format, window=display, model=vae, force=force,
                            action=f"interpolate {method} {first.name} -> {second.name}")
        check_targets([strip_path] + ([gif_path] if gif_path else []) + (files.paths if files else []), force=force)

        ends = [load_on_grid(path, vae.grid, with_hu=with_originals) for path in (first, second)]
        mu_first, mu_second = (encode_one(vae, item) for item in ends)
        path = (slerp if method == "slerp" else lerp)(mu_first, mu_second, steps)
        frames = from_model(vae.decode(path), vae.grid)

        tiles = list(frames)
        labels = ["A"] + [f"t={t:.2f}" for t in np.linspace(0, 1, steps)[1:-1]] + ["B"]
        if with_originals:
            tiles = [ends[0].hu, *tiles, ends[1].hu]
            labels = ["A input", *labels, "B input"]
        title = f"{first.name} to {second.name} · {method} · {vae.card.get('name')}"
        strip = grid_image(np.stack(tiles), display, rows=1, cols=len(tiles), col_labels=labels, title=title,
                           scale=tile_scale(vae.grid.size))
        save_png(strip, strip_path, force=force)
        run.record("strip_png", strip_path, steps=steps)
        run.note(f"wrote {steps}-step {method} strip to {strip_path}")
        if gif_path is not None:
            save_gif(frames_loop(frames), gif_path, window=display, force=force)
            run.record("gif", gif_path, frames=2 * steps - 2)
            run.note(f"wrote animation to {gif_path}")
        if files is not None:
            files.write(0, frames)
            files.close()
            run.record(f"per_file_{file_format}", per_file, count=steps, files=[str(p) for p in files.paths])
            run.note(f"wrote {steps} .{file_format} files to {per_file}")
        run.finish(method=method, steps=steps, inputs=[str(first), str(second)])
