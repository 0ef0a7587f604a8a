"""ctgen traverse: one latent unit at a time, around a slice's code or the prior mean."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


def traverse(
    slice_path: Annotated[
        Path | None,
        typer.Argument(metavar="[SLICE.dcm]", help="Slice to traverse around.",
                       show_default="the prior mean, z = 0"),
    ] = None,
    units: Annotated[
        str | None,
        typer.Option("--units", "-u", metavar="LIST|topK|all",
                     help='Rows: units as "0-4,7", "top5" (highest KL on the card) or "all". ',
                     show_default="top8"),
    ] = None,
    value_range: Annotated[
        float, typer.Option("--range", "-r", help="Largest offset added to a unit (> 0).")
    ] = 3.0,
    steps: Annotated[
        int, typer.Option("--steps", "-s", min=1, help="Columns: offsets from -range to +range (odd; even rounds up).")
    ] = 7,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Grid .png, or a folder.", show_default="traverse.png",
                     rich_help_panel="Output"),
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
    -range … +range; the middle column is the unchanged code, i.e. the reconstruction. Writes
    traverse.png; --gif-dir adds one animation per unit, --per-file one file per cell.
    """
    import numpy as np

    from ctgen.cli.commands._slices import encode_one, frames_loop, kl_per_unit, load_on_grid
    from ctgen.latent import offsets, parse_units
    from ctgen.latent import traverse as traverse_grid
    from ctgen.cli.commands._images import PerFile, tile_scale
    from ctgen.outputs import Run, check_targets, resolve_out
    from ctgen.preprocess import from_model
    from ctgen.render import grid_image, parse_window, save_gif, save_png

    with Run("traverse", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        grid_path = resolve_out(out, "traverse.png", (".png",))
        vae = run.load_model(model, device)
        ranking = vae.units_by_kl()
        spec = units if units is not None else f"top{min(8, vae.latent_size)}"
        chosen = parse_units(spec, vae.latent_size, ranking)
        deltas = offsets(value_range, steps)
        digits = len(str(vae.latent_size - 1))
        gif_paths = [gif_dir / f"u{unit:0{digits}d}.gif" for unit in chosen] if gif_dir is not None else []
        files = None
        if per_file is not None:
            names = [f"u{unit:0{digits}d}_{delta:+.2f}" for unit in chosen for delta in deltas]
            files = PerFile(per_file, names, file_format, window=display, model=vae, force=force,
                            action=f"traverse {slice_path.name if slice_path else 'prior mean'}")
        check_targets([grid_path, *gif_paths] + (files.paths if files else []), force=force)

        if slice_path is not None:
            center = encode_one(vae, load_on_grid(slice_path, vae.grid, with_hu=False))
        else:
            center = np.zeros(vae.latent_size, np.float32)
        hu = from_model(vae.decode(traverse_grid(center, chosen, deltas)), vae.grid)

        kl = kl_per_unit(vae)
        row_labels = [f"u{unit} (KL {kl[unit]:.2f})" if kl else f"u{unit}" for unit in chosen]
        middle = "recon" if slice_path is not None else "z=0"
        col_labels = [f"{delta:+.1f}" if delta else middle for delta in deltas]
        origin = slice_path.name if slice_path is not None else "prior mean"
        title = f"traversal around {origin} · {vae.card.get('name')}"
        picture = grid_image(hu, display, rows=len(chosen), cols=len(deltas), row_labels=row_labels,
                             col_labels=col_labels, title=title, scale=tile_scale(vae.grid.size))
        save_png(picture, grid_path, force=force)
        run.record("grid_png", grid_path, units=chosen, offsets=[float(d) for d in deltas])
        run.note(f"wrote {len(chosen)} x {len(deltas)} traversal to {grid_path}")
        for row, gif_path in enumerate(gif_paths):
            save_gif(frames_loop(hu[row * len(deltas) : (row + 1) * len(deltas)]), gif_path, window=display,
                     force=force)
            run.record("gif", gif_path, unit=chosen[row])
        if gif_paths:
            run.note(f"wrote {len(gif_paths)} GIFs to {gif_dir}")
        if files is not None:
            files.write(0, hu)
            files.close()
            run.record(f"per_file_{file_format}", per_file, count=len(hu), files=[str(p) for p in files.paths])
            run.note(f"wrote {len(hu)} .{file_format} files to {per_file}")
        run.finish(units=chosen, offsets=[float(d) for d in deltas], center=origin,
                   kl=[kl[unit] for unit in chosen] if kl else None)
