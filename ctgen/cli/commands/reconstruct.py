"""ctgen reconstruct: how well the model reproduces given slices."""

from __future__ import annotations

from pathlib import Path

from ctgen.cli.options import Option, output, shared

OPTIONS = (
    Option("inputs", (), "list", metavar="FILES/DIRS", required=True, show_default=False,
           help="DICOM files, NIfTI volumes (read as named) or folders (scan's selection)."),
    output("Folder for one panel PNG per slice (<name>.png), or a .png file for a single input.", "reconstructions/"),
    Option("diff_range", ("--diff-range",), "float", 100.0, bounds="diff_range",
           help="HU difference shown as black/white in the difference panel."),
    *shared("per_file", "file_format", "skip_bad", "window", "model", "device", "batch_size", "force",
            "json_summary", "quiet", file_format="npy"),
)


def reconstruct(*, inputs, out, diff_range, per_file, file_format, skip_bad, window, model, device, batch_size,
                force, json_summary, quiet) -> None:
    """Encode and decode slices: original | reconstruction | difference panels, one PNG per slice.

    Errors per slice (MAE and RMSE in HU, inside the head: original > -500 HU) are computed against what
    the model can reach (the original through its HU map), shown as a table on stderr and in --json.
    A folder gives the files of scan's selection, as encode takes them. Every axial slice of a NIfTI volume
    and every frame of a multi-frame file is reconstructed (FILE#K, panels NAME_K.png). --per-file also writes the reconstructions themselves (npy in HU by default).
    """
    from contextlib import nullcontext

    import numpy as np

    from ctgen.api import gather_files, slice_sources
    from ctgen.cli.run import Run
    from ctgen.errors import ArgumentError, InputError
    from ctgen.images.render import PICTURE_PX, grid_image, parse_window, save_png
    from ctgen.io.writers import PerFile, check_targets, is_folder, unique_names

    with Run("reconstruct", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        on_error = run.on_error(skip_bad)
        files = slice_sources(gather_files(inputs, on_error=on_error, on_selection=run.selected))
        if not files and not run.failures:
            raise InputError(None, f"no DICOM files found in {' '.join(inputs)}")
        names = unique_names(files)
        single = out is not None and not is_folder(out)
        if single and Path(out).suffix.lower() != ".png":
            raise ArgumentError("out", f"{out}: unsupported file type {Path(out).suffix}; use .png or a folder")
        if single and len(files) != 1:
            raise ArgumentError("out", f"{out}: one PNG holds one slice; give a folder for {len(files)} slices")
        panels = [Path(out)] if single else [Path(out or "reconstructions") / f"{name}.png" for name in names]
        generator = run.load_generator(model, device)
        recon_files = None
        if per_file is not None:
            recon_files = PerFile(per_file, names, file_format, window=display, card=generator.card,
                                  grid=generator.grid, force=force, action="reconstruct: encode mu, decode")
        check_targets(panels + (recon_files.paths if recon_files else []), force=force)

        index = {str(path): position for position, path in enumerate(files)}
        windows = [display, display, (0.0, 2.0 * diff_range)]
        labels = ["original", "reconstruction", f"diff ±{diff_range:g} HU"]
        rows = []
        with (recon_files or nullcontext()), run.progress(len(files), "reconstructing") as advance:
            for item in generator.iter_reconstruct(files, batch_size=batch_size, on_error=on_error):
                position = index[item.slice.source]
                figures = f"MAE {item.mae_hu:.1f} HU · RMSE {item.rmse_hu:.1f} HU" if item.mae_hu is not None \
                    else "no head found"
                panel = grid_image(np.stack([item.slice.hu, item.recon_hu, item.recon_hu - item.target_hu]), windows,
                                   rows=1, cols=3, col_labels=labels, tile_px=PICTURE_PX,
                                   title=f"{Path(item.slice.source).name} · {figures}")
                save_png(panel, panels[position], force=force)
                run.wrote([{"kind": "panel_png", "path": str(panels[position]), "file": item.slice.source}], "panel",
                          note=False)
                if recon_files is not None:
                    recon_files.write(position, item.recon_hu[None])
                rows.append({"file": item.slice.source, "png": str(panels[position]), "mae_hu": item.mae_hu,
                             "rmse_hu": item.rmse_hu, "head_pixels": item.head_pixels,
                             "warnings": list(item.slice.warnings)})
                advance(1)
        maes = [row["mae_hu"] for row in rows if row["mae_hu"] is not None]
        rmses = [row["rmse_hu"] for row in rows if row["rmse_hu"] is not None]
        means = (float(np.mean(maes)), float(np.mean(rmses))) if maes else (None, None)
        run.table(_table(rows, means))
        if recon_files is not None:
            written = [str(recon_files.paths[index[row["file"]]]) for row in rows]
            run.wrote([{"kind": f"per_file_{file_format}", "path": str(per_file), "count": len(rows),
                        "files": written}], "reconstructions")
        run.finish(slices=rows, failed=run.failures, mean_mae_hu=means[0], mean_rmse_hu=means[1])
        run.exit_if_skipped(len(files) + sum(failure not in index for failure in run.failures))


def _table(rows: list[dict], means: tuple[float | None, float | None]):
    from rich.table import Table

    table = Table(title="reconstruction error inside the head (HU)", title_justify="left")
    for name, justify in (("file", "left"), ("MAE", "right"), ("RMSE", "right"), ("head px", "right")):
        table.add_column(name, justify=justify, overflow="fold")

    def cell(value):
        return "-" if value is None else f"{value:.1f}"

    for row in rows:
        table.add_row(row["file"], cell(row["mae_hu"]), cell(row["rmse_hu"]), str(row["head_pixels"]))
    if len(rows) > 1 and means[0] is not None:
        table.add_section()
        table.add_row("mean", *map(cell, means), "")
    return table
