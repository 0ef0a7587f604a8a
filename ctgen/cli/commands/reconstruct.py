"""ctgen reconstruct: how well the model reproduces given slices."""

from __future__ import annotations

import sys
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
    SkipBadOption,
    WindowOption,
)

HEAD_THRESHOLD_HU = -500.0  # pixels of the original above this count as head for the error figures


def reconstruct(
    inputs: Annotated[list[Path], typer.Argument(metavar="FILES/DIRS", help="DICOM files or folders (recursive).",
                                                 show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for one panel PNG per slice (<name>.png), or a .png file for a "
                     "single input.", show_default="reconstructions/", rich_help_panel="Output"),
    ] = None,
    diff_range: Annotated[
        float, typer.Option("--diff-range", min=1.0, help="HU difference shown as black/white in the difference panel.")
    ] = 100.0,
    per_file: PerFileOption = None,
    file_format: FormatOption = "npy",
    skip_bad: SkipBadOption = False,
    window: WindowOption = "brain",
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode and decode slices: original | reconstruction | difference panels, one PNG per slice.

    Errors per slice (MAE and RMSE in HU, inside the head: original > -500 HU) are computed against the
    original clipped to the model's HU window, shown as a table on stderr and in --json. --per-file also
    writes the reconstructions themselves (npy in HU by default).
    """
    import numpy as np

    from ctgen.cli.commands._slices import iter_on_grid
    from ctgen.dicom import iter_dicom_files
    from ctgen.errors import CtgenError, InputError
    from ctgen.cli.commands._images import PerFile, batch_size_for, tile_scale
    from ctgen.outputs import Run, check_targets, unique_names
    from ctgen.preprocess import from_model
    from ctgen.render import grid_image, parse_window, save_png

    with Run("reconstruct", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        failures: list[str] = []

        def bad(path, error: CtgenError) -> None:
            if not skip_bad:
                raise error
            print(f"ctgen: skipped {path}: {getattr(error, 'reason', error)}", file=sys.stderr, flush=True)
            failures.append(str(path))

        files: set[Path] = set()
        for item in inputs:
            try:
                files.update(iter_dicom_files([item]))
            except CtgenError as error:
                bad(item, error)
        if not files and not failures:
            raise InputError(None, f"no DICOM files found in {' '.join(map(str, inputs))}")
        vae = run.load_model(model, device)
        slices = []
        with run.progress(len(files), "reading") as advance:
            for path, loaded in iter_on_grid(sorted(files, key=str), vae.grid, with_hu=True):
                advance(1)
                if isinstance(loaded, CtgenError):
                    bad(path, loaded)
                else:
                    slices.append(loaded)

        names = unique_names([item.path for item in slices])
        if out is not None and out.suffix.lower() == ".png" and not out.is_dir():
            if len(slices) != 1:
                raise InputError("--out", f"{out}: one PNG holds one slice; give a folder for {len(slices)} slices")
            panel_paths = [out]
        else:
            folder = out if out is not None else Path("reconstructions")
            panel_paths = [folder / f"{name}.png" for name in names]
        recon_files = None
        if per_file is not None:
            recon_files = PerFile(per_file, names, file_format, window=display, model=vae, force=force,
                                  action="reconstruct (encode mu, decode)")
        check_targets(panel_paths + (recon_files.paths if recon_files else []), force=force)

        rows = []
        step = batch_size_for(vae, batch_size)
        windows = [display, display, (0.0, 2.0 * diff_range)]
        labels = ["original", "reconstruction", f"diff ±{diff_range:g} HU"]
        with run.progress(len(slices), "reconstructing") as advance:
            for start in range(0, len(slices), step):
                batch = slices[start : start + step]
                images = np.stack([item.image for item in batch])[:, None]
                mu, _ = vae.encode(images)
                recon = from_model(vae.decode(mu), vae.grid)
                target = from_model(images, vae.grid)  # the original as the model sees it (window-clipped)
                for offset, item in enumerate(batch):
                    index = start + offset
                    difference = recon[offset] - target[offset]
                    head = item.hu > HEAD_THRESHOLD_HU
                    mae = float(np.abs(difference[head]).mean()) if head.any() else None
                    rmse = float(np.sqrt(np.square(difference[head]).mean())) if head.any() else None
                    figures = f"MAE {mae:.1f} HU · RMSE {rmse:.1f} HU" if mae is not None else "no head found"
                    panel = grid_image(np.stack([item.hu, recon[offset], difference]), windows, rows=1, cols=3,
                                       col_labels=labels, title=f"{item.path.name} · {figures}",
                                       scale=tile_scale(vae.grid.size))
                    save_png(panel, panel_paths[index], force=force)
                    rows.append({"file": str(item.path), "png": str(panel_paths[index]), "mae_hu": mae,
                                 "rmse_hu": rmse, "head_pixels": int(head.sum())})
                if recon_files is not None:
                    recon_files.write(start, recon)
                advance(len(batch))
        if recon_files is not None:
            recon_files.close()

        _print_table(run, rows)
        for row in rows:
            run.record("panel_png", row["png"], file=row["file"])
        if recon_files is not None:
            run.record(f"per_file_{file_format}", per_file, count=len(rows), files=[str(p) for p in recon_files.paths])
        maes = [row["mae_hu"] for row in rows if row["mae_hu"] is not None]
        rmses = [row["rmse_hu"] for row in rows if row["rmse_hu"] is not None]
        run.finish(slices=rows, failed=failures,
                   mean_mae_hu=float(np.mean(maes)) if maes else None,
                   mean_rmse_hu=float(np.mean(rmses)) if rmses else None)
        if failures:
            print(f"ctgen: {len(failures)} inputs failed and were skipped", file=sys.stderr, flush=True)
            raise typer.Exit(1)


def _print_table(run, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="reconstruction error inside the head (HU)", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("MAE", justify="right")
    table.add_column("RMSE", justify="right")
    table.add_column("head px", justify="right")

    def cell(value):
        return "-" if value is None else f"{value:.1f}"

    for row in rows:
        table.add_row(row["file"], cell(row["mae_hu"]), cell(row["rmse_hu"]), str(row["head_pixels"]))
    maes = [row["mae_hu"] for row in rows if row["mae_hu"] is not None]
    rmses = [row["rmse_hu"] for row in rows if row["rmse_hu"] is not None]
    if len(rows) > 1 and maes:
        table.add_section()
        table.add_row("mean", cell(sum(maes) / len(maes)), cell(sum(rmses) / len(rmses)), "")
    run.table(table)
