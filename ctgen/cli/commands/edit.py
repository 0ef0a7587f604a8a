"""ctgen edit: set bound factors of a slice in their units of measure (rotation in degrees, sizes in mm)."""

from __future__ import annotations

import math
from pathlib import Path

from ctgen.cli.options import Option, output, shared

OPTIONS = (
    Option("slice_path", metavar="SLICE.dcm", help="Slice to edit (a file, or VOLUME#K).", required=True,
           show_default=False),
    Option("settings", ("--set",), "list", required=True, metavar="FACTOR=VALUE", show_default=False,
           help="A bound factor (ctgen info lists them) in its unit of measure: FACTOR=40 sets it to 40, FACTOR=+10 / "
                "FACTOR=-10 changes the model's reading of the slice by that much, FACTOR==-10 sets a negative "
                "value. Repeat for several factors."),
    *shared("slice_index"),
    output(".png (original | reconstruction | edited, labelled), .dcm (the edited slice as a derived CT image with "
           "provenance), .npy (float32 HU on the model grid), or a folder (DIR/ gets edited.png).", "edited.png"),
    *shared("window", "model", "device", "force", "json_summary", "quiet"),
)


def edit(*, slice_path, settings, slice_index, out, window, model, device, force, json_summary, quiet) -> None:
    """Set measured factors of a slice: encode it, set each named bound unit to the value asked for, decode.

    Only units the model was trained to bind to a factor (--bind; listed by ctgen info and ctgen units) can be
    set. A factor's value is read off the unit as mean + std * z (the card's binding); a relative change starts
    from the model's reading of the slice. --json reports, per bound factor, the model's reading before and
    after and the factor measured on the input and on the output (the same measurement as ctgen scan; null
    for a series factor, which one slice cannot measure). Of a volume or multi-frame file, the middle slice
    unless --slice.
    """
    import numpy as np

    from ctgen.cli.run import Run
    from ctgen.errors import ArgumentError
    from ctgen.latent import parse_setting
    from ctgen.images.render import PICTURE_PX, grid_image, parse_window, save_png
    from ctgen.io.writers import check_targets, derived_series, resolve_out, save_npy

    with Run("edit", quiet=quiet, json_summary=json_summary, force=force) as run:
        changes = [parse_setting(text) for text in settings]
        if not changes:
            raise ArgumentError("set", "name at least one bound factor: --set FACTOR=VALUE")
        display = parse_window(window)
        target = resolve_out(out, "edited.png", (".png", ".dcm", ".npy"))
        generator = run.load_generator(model, device)
        for change in changes:
            generator.bound(change.factor)
        check_targets([target], force=force)

        edited = generator.edit(slice_path, changes, slice_index=slice_index)
        origin = Path(edited.slice.source).name
        asked = ", ".join(map(str, changes))
        suffix = target.suffix.lower()
        if suffix == ".png":
            recon = generator.decode(edited.mu)[0]
            after = "; ".join(f"{factor} {_shown(generator, factor, edited.reading_before[factor])} -> "
                              f"{_shown(generator, factor, value)}" for factor, value in edited.requested.items())
            picture = grid_image(np.stack([edited.slice.hu, recon, edited.hu]), display, rows=1, cols=3,
                                 col_labels=["original", "before: reconstruction", "after: edited"],
                                 title=f"{origin} · {after} · {generator.card.name}", tile_px=PICTURE_PX)
            save_png(picture, target, force=force)
        elif suffix == ".dcm":
            action = f"edit {origin}: {asked}"
            writer = derived_series((1, *edited.hu.shape), target, card=generator.card,
                                    spacing_mm=generator.grid.spacing_mm, action=action, window=display,
                                    description=f"ctgen edit {asked}"[:64], comments=f"edited {origin}: {asked}")
            writer.write(0, edited.hu, target, force=force)
        else:
            save_npy(edited.hu.astype(np.float32), target, force=force)
        run.wrote([{"kind": f"edited_{suffix.lstrip('.')}", "path": str(target), "count": 1}], "edited slice")
        run.finish(file=edited.slice.source, settings=[str(change) for change in changes],
                   factors=[_report(bound, edited) for bound in generator.bound_units])


def _shown(generator, factor: str, value: float) -> str:
    from ctgen.latent import physical_text

    return physical_text(value, generator.bound(factor).unit_of_measure)


def _number(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _report(bound, edited) -> dict:
    """One bound factor in --json: the model's reading before and after, what was asked, what was measured."""
    factor = bound.factor
    return {"factor": factor, "unit": bound.unit, "unit_of_measure": bound.unit_of_measure,
            "set": factor in edited.requested, "requested": _number(edited.requested.get(factor)),
            "reading_before": _number(edited.reading_before[factor]),
            "reading_after": _number(edited.reading_after[factor]),
            "measured_input": _number(edited.measured_before[factor]),
            "measured_output": _number(edited.measured_after[factor])}
