"""The work of `ctgen traverse`, without Typer: called by ctgen.cli.commands.traverse (Typer) and by the
fast path (ctgen.cli.fast) with every option given."""

from __future__ import annotations

from pathlib import Path


def traverse(
    *,
    slice_path: str | None,
    slice_index: int | None,
    units: str,
    value_range: float,
    steps: int,
    out: str | None,
    gif_dir: Path | None,
    per_file: Path | None,
    file_format: str,
    window: str,
    model: str | None,
    device: str,
    force: bool,
    json_summary: bool,
    quiet: bool,
) -> None:
    """Vary one latent unit per row around the encoded slice (or the prior mean)."""
    from ctgen.cli.run import Run, check_targets, resolve_out
    from ctgen.errors import ArgumentError
    from ctgen.latent import offsets
    from ctgen.render import PICTURE_PX, frames_loop, grid_image, labelled_frames, parse_window, save_gif, save_png
    from ctgen.writers import PerFile

    with Run("traverse", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        grid_path = resolve_out(out, "traverse.png", (".png",))
        deltas = offsets(value_range, steps)
        generator = run.load_generator(model, device)
        chosen = generator.units(units)
        digits = len(str(generator.latent_size - 1))
        gif_paths = [gif_dir / f"u{unit:0{digits}d}.gif" for unit in chosen] if gif_dir is not None else []
        if slice_index is not None and slice_path is None:
            raise ArgumentError("slice_index", "picks a slice of SLICE; give one")
        loaded = generator.load(slice_path, slice_index=slice_index) if slice_path is not None else None
        origin = Path(loaded.source).name if loaded is not None else "prior mean"
        files = None
        if per_file is not None:
            files = PerFile(per_file, [f"u{unit:0{digits}d}_{delta:+.2f}" for unit in chosen for delta in deltas],
                            file_format, window=display, card=generator.card, grid=generator.grid, force=force,
                            action=f"traverse {origin}: units {chosen}, offsets {value_range:g} in {len(deltas)}",
                            groups=[row for row in range(len(chosen)) for _ in deltas],
                            descriptions=[f"ctgen traverse u{unit} {-value_range:+g}..{value_range:+g}"
                                          for unit in chosen],
                            comments=[f"unit {unit} offset {delta:+.2f} around {origin}" for unit in chosen
                                      for delta in deltas])
        check_targets([grid_path, *gif_paths, *(files.paths if files else [])], force=force)

        center = generator.encode(loaded)[0] if loaded is not None else None
        hu = generator.traverse(center, chosen, deltas)
        middle = "recon" if loaded is not None else "z=0"
        picture = grid_image(hu, display, rows=len(chosen), cols=len(deltas),
                             row_labels=[generator.card.unit_label(unit) for unit in chosen],
                             col_labels=[f"{delta:+.1f}" if delta else middle for delta in deltas],
                             title=f"traversal around {origin} · {generator.card.name}",
                             tile_px=PICTURE_PX)
        save_png(picture, grid_path, force=force)
        run.wrote([{"kind": "grid_png", "path": str(grid_path), "count": len(hu), "units": chosen}], "images")
        for row, gif_path in enumerate(gif_paths):
            frames = labelled_frames(hu[row * len(deltas) : (row + 1) * len(deltas)], display,
                                     [f"u{chosen[row]} {delta:+.1f}" if delta else f"u{chosen[row]} {middle}"
                                      for delta in deltas])
            save_gif(frames_loop(frames), gif_path, force=force)
            run.wrote([{"kind": "gif", "path": str(gif_path), "unit": chosen[row], "count": 2 * len(deltas) - 2}],
                      "frames")
        if files is not None:
            with files:
                files.write(0, hu)
            run.wrote([{"kind": f"per_file_{file_format}", "path": str(per_file), "count": len(hu),
                        "files": [str(p) for p in files.paths]}], "files")
        kl = generator.kl_per_unit
        run.finish(units=chosen, offsets=[float(d) for d in deltas], center=origin,
                   kl=[kl[unit] for unit in chosen] if kl else None)
