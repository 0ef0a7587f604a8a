"""ctgen scan: what an archive holds, and which of its files are usable axial CT slices."""

from __future__ import annotations

from ctgen.cli.options import Option, output, shared
from ctgen.defaults import MAX_TILT_DEG

OPTIONS = (
    Option("archives", (), "list", metavar="ARCHIVE...", required=True, show_default=False,
           help="Folders (walked at any depth; any file names) or files."),
    output("Write one row per file: .csv or .jsonl (path, reason, detail, patient/study/series keys, frames, "
           "thickness, kernel, field of view, spacing, tilt); a folder (DIR/) gets inventory.csv."),
    Option("split_by", ("--split-by",), "choice", "auto", choices=("auto", "patient", "study"),
           help="Patient keys: auto (PatientID; the study when the ID is empty; ID, birth date and sex when one ID "
                "holds different people), patient, or study."),
    Option("max_tilt", ("--max-tilt",), "float", MAX_TILT_DEG, bounds="max_tilt", metavar="DEG",
           help="Slices whose normal is farther than this from the head-foot axis are not-axial."),
    *shared("force", "json_summary", "quiet"),
)


def scan(*, archives, out, split_by, max_tilt, force, json_summary, quiet) -> None:
    """Inventory an archive: decide every file, from its header, with one reason code.

    Reasons: ok, not-dicom, unreadable (not a regular file, a folder that cannot be listed, a link that
    loops), truncated, no-image, not-ct, colour, invalid (header values the reader refuses), secondary-capture,
    localizer, not-axial, duplicate (a SOP Instance UID already seen; the lossless copy is kept). A gantry-tilted axial stack is
    ok, with its tilt noted. Prints a table per series on stderr (images used, files skipped by reason, slice
    thickness, kernel, field of view); --json prints a summary listing every skipped file; --out writes one
    row per file. Patients appear as hashed keys, never their IDs. Training (python -m train) selects its
    slices by the same rules.
    """
    from ctgen.cli.run import Run
    from ctgen.io.scan import INVENTORY_SUFFIXES, list_files, write_inventory
    from ctgen.io.scan import scan as scan_archive
    from ctgen.io.writers import check_targets, resolve_out

    with Run("scan", quiet=quiet, json_summary=json_summary, force=force) as run:
        target = resolve_out(out, "inventory.csv", INVENTORY_SUFFIXES) if out is not None else None
        if target is not None:
            check_targets([target], force=force)
        files = list_files(archives)
        if not files:
            from ctgen.errors import InputError

            raise InputError(None, f"no files found in {' '.join(archives)}")
        with run.progress(len(files), "scanning") as advance:
            inventory = scan_archive(archives, split_by=split_by, max_tilt_deg=max_tilt, files=files,
                                     progress=lambda done, total: advance(1))
        run.table(_table(inventory))
        for line in inventory.describe():
            run.note(line)
        for warning in inventory.warnings:
            run.warn(warning)
        if target is not None:
            write_inventory(inventory, target, force=force)
            run.wrote([{"kind": f"inventory_{target.suffix.lower().lstrip('.')}", "path": str(target),
                        "count": len(inventory.entries)}], "inventory rows")
        run.finish(**inventory.summary())


def _table(inventory):
    from rich.table import Table

    table = Table(title="archive by series", title_justify="left")
    for name, justify in (("patient", "left"), ("study", "left"), ("series", "left"), ("images", "right"),
                          ("skipped files", "left"), ("thickness mm", "right"), ("kernel", "left"),
                          ("FOV mm", "right"), ("tilt °", "right")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name in ("patient", "study"))
    for row in inventory.series_rows():
        skipped = ", ".join(f"{count} {reason}" for reason, count in row["reasons"].items() if reason != "ok")
        table.add_row(row["patient"][:8] or "-", row["study"][:8] or "-", row["label"] or row["series"][:8] or "-",
                      str(row["images"]), skipped, row["slice_thickness_mm"], row["kernel"], row["fov_mm"],
                      row["tilt_deg"])
    return table
