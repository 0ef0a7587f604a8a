"""ctgen traverse: one latent unit at a time, around a slice's code or the prior mean."""

from __future__ import annotations

from pathlib import Path

from ctgen.cli.options import Option, output, shared
from ctgen.defaults import DEFAULT_TRAVERSE_RANGE, DEFAULT_TRAVERSE_STEPS, DEFAULT_TRAVERSE_UNITS

OPTIONS = (
    Option("slice_path", metavar="[SLICE.dcm]", help="Slice to traverse around (a file, or VOLUME#K).",
           show_default="the prior mean, z = 0"),
    *shared("slice_index"),
    Option("units", ("--units", "-u"), "str", DEFAULT_TRAVERSE_UNITS, metavar="LIST|topK|all|NAMES",
           help='Rows: units as "0-4,7", "top5" (highest KL on the card), "all", or factor names: a bound unit\'s '
                'factor ("rotation_deg,head_width_max_mm", moved in its unit of measure), else a factor the card '
                'names ("level"). Names and numbers may mix.'),
    Option("value_range", ("--range", "-r"), "list", metavar="N|FACTOR=LO:HI|FACTOR=N",
           show_default=f"{DEFAULT_TRAVERSE_RANGE:g}",
           help="N: offsets -N..+N standard deviations on every row (> 0, at most 100; a bound unit moves N of its "
                "factor's training standard deviations, labelled in its unit). FACTOR=LO:HI: a bound factor from "
                "LO to HI in its unit of measure (rotation_deg=-20:20). FACTOR=N: ± N in its unit around the "
                "model's reading of the slice (rotation_deg=15). Repeat the option or separate with commas."),
    Option("steps", ("--steps", "-s"), "int", DEFAULT_TRAVERSE_STEPS, bounds="traverse_steps",
           help="Columns: offsets from -range to +range (odd; even rounds up)."),
    output("Grid .png, or a folder (DIR/ gets traverse.png).", "traverse.png"),
    Option("gif_dir", ("--gif-dir",), "path", metavar="DIR", file_okay=False, panel="Output",
           help="Also write one animated GIF per unit: DIR/u03.gif, …"),
    *shared("per_file", "file_format", "window", "model", "device", "force", "json_summary", "quiet"),
)


def traverse(*, slice_path, slice_index, units, value_range, steps, out, gif_dir, per_file, file_format, window,
             model, device, force, json_summary, quiet) -> None:
    """Vary one latent unit per row around the encoded slice (or the prior mean).

    Rows are units, labelled with their KL from the model card ("u3 (KL 1.2)"); columns are offsets
    -range … +range; the middle column is the unchanged code, i.e. the reconstruction. A unit bound to a
    measured factor (ctgen info) is labelled in the factor's unit: its row names the factor, each picture
    the change and the value it stands for ("+15° (16.2°)"); --json lists the values per row. Writes
    traverse.png; --gif-dir adds one animation per unit, --per-file one file per cell (as DICOM, one
    ordered series per unit).
    """
    from ctgen.cli.run import Run
    from ctgen.errors import ArgumentError
    from ctgen.latent import (caption_text, cell_name, change_text, parse_ranges, row_label, row_name, row_summary,
                              span_text)
    from ctgen.images.render import PICTURE_PX, frames_loop, grid_image, labelled_frames, parse_window, save_gif, save_png
    from ctgen.io.writers import PerFile, check_targets, resolve_out

    with Run("traverse", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        grid_path = resolve_out(out, "traverse.png", (".png",))
        ranges = parse_ranges(value_range)
        generator = run.load_generator(model, device)
        chosen = generator.units(units)
        digits = len(str(generator.latent_size - 1))
        gif_paths = [gif_dir / f"u{unit:0{digits}d}.gif" for unit in chosen] if gif_dir is not None else []
        if slice_index is not None and slice_path is None:
            raise ArgumentError("slice_index", "picks a slice of SLICE; give one")
        # the rows around z = 0: --range checked, and the changes each column makes, before a slice is read
        planned = generator.traverse_rows(None, chosen, ranges, steps)
        count = len(planned[0].z)
        loaded = generator.load(slice_path, slice_index=slice_index) if slice_path is not None else None
        origin = Path(loaded.source).name if loaded is not None else "prior mean"
        files = None
        if per_file is not None:
            cells = [(row, column) for row in planned for column in range(count)]
            files = PerFile(per_file, [cell_name(row, column, digits) for row, column in cells],
                            file_format, window=display, card=generator.card, grid=generator.grid, force=force,
                            action=f"traverse {origin}: units {chosen}, {_ranges_text(value_range)} in {count}",
                            groups=[index for index in range(len(planned)) for _ in range(count)],
                            descriptions=[f"ctgen traverse {row_name(row)} {span_text(row)}" for row in planned],
                            comments=[f"unit {row.unit} offset {float(row.offsets[column]):+.2f} around {origin}"
                                      if row.bound is None else
                                      f"unit {row.unit} {row.bound.factor} {change_text(row, column)} around {origin}"
                                      for row, column in cells])
        check_targets([grid_path, *gif_paths, *(files.paths if files else [])], force=force)

        center = generator.encode(loaded)[0] if loaded is not None else None
        rows = generator.traverse_rows(center, chosen, ranges, steps)
        middle = "recon" if loaded is not None else "z=0"
        captions = [caption_text(row, column, middle) for row in rows for column in range(count)]
        if files is not None:  # per-file PNGs carry the same captions as the grid
            files.labels = [f"{row_name(row)} {caption}"
                            for row, caption in zip((r for r in rows for _ in range(count)), captions)]
        hu = generator.decode_rows(center, rows)
        physical = any(row.bound is not None for row in rows)
        picture = grid_image(hu, display, rows=len(rows), cols=count,
                             row_labels=[row_label(generator.card, row) for row in rows],
                             col_labels=None if physical else captions[:count],
                             tile_labels=captions if physical else None,
                             title=f"traversal around {origin} · {generator.card.name}",
                             tile_px=PICTURE_PX)
        save_png(picture, grid_path, force=force)
        run.wrote([{"kind": "grid_png", "path": str(grid_path), "count": len(hu), "units": chosen}], "images")
        for index, gif_path in enumerate(gif_paths):
            frames = labelled_frames(hu[index * count : (index + 1) * count], display,
                                     [f"{row_name(rows[index])} {caption}"
                                      for caption in captions[index * count : (index + 1) * count]])
            save_gif(frames_loop(frames), gif_path, force=force)
            run.wrote([{"kind": "gif", "path": str(gif_path), "unit": chosen[index], "count": 2 * count - 2}],
                      "frames")
        if files is not None:
            run.write_files(files, hu)
        kl = generator.kl_per_unit
        free = next((row for row in rows if row.bound is None), None)
        run.finish(units=chosen, offsets=[float(d) for d in (free.offsets if free is not None else rows[0].offsets)],
                   range_sd=ranges.sd, center=origin, kl=[kl[unit] for unit in chosen] if kl else None,
                   rows=[row_summary(row, caption) for row, caption in
                         zip(rows, (captions[i * count : (i + 1) * count] for i in range(len(rows))))])


def _ranges_text(value_range) -> str:
    return "range " + (",".join(value_range) if value_range else "default")
