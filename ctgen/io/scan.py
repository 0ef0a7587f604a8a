"""Archive inventory and selection: which files are usable axial CT slices, which are not and why, and who
each belongs to. ``ctgen scan`` prints it; training (``train.data``) selects its slices with it, so the two
can never disagree.

Every file under the archive is decided with one reason code of ``REASONS`` (``ctgen.io.scan_entry``, from its
header alone). Files are grouped by patient, study and series. Patient keys are hashes
(``ctgen.io.dicom.patient_key``), never the ID: by PatientID; by study when the ID is empty; and, when
one ID holds studies with different birth dates or sexes (anonymisation that gave two people one ID),
by ID, birth date and sex, with a warning. ``split_by`` "patient" or "study" overrides that.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctgen.defaults import MAX_TILT_DEG
from ctgen.io.dicom.common import patient_key
from ctgen.errors import InputError
from ctgen.io.nifti import is_nifti, sidecar_path
from ctgen.io.scan_entry import REASONS, ROW_FIELDS, Entry, decide, shown_path

__all__ = ["MAX_TILT_DEG", "SPLIT_BY", "Inventory", "list_files", "scan", "split_keys", "write_inventory"]

SPLIT_BY = ("auto", "patient", "study")
INVENTORY_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Inventory:
    """What ``scan`` found: one ``Entry`` per file (sorted by path), the warnings about patient keys, and the
    settings it ran with."""

    sources: list[str]
    entries: list[Entry]
    warnings: list[str]
    split_by: str = "auto"
    max_tilt_deg: float = MAX_TILT_DEG

    @property
    def used(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.used]

    @property
    def skipped(self) -> list[Entry]:
        return [entry for entry in self.entries if not entry.used]

    def counts(self) -> dict[str, int]:
        """Files by reason, in the order of REASONS (reasons with no file left out)."""
        counter = Counter(entry.reason for entry in self.entries)
        return {reason: counter[reason] for reason in REASONS if counter[reason]}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts of files and images, patients, studies and series used, files by reason,
        every skipped file with its reason, the warnings and the settings."""
        used = self.used
        return {
            "sources": self.sources,
            "files": len(self.entries),
            "used_files": len(used),
            "used_images": sum(entry.frames for entry in used),
            "patients": len({entry.patient for entry in used}),
            "studies": len({entry.study for entry in used}),
            "series": len({entry.series for entry in used}),
            "reasons": self.counts(),
            "skipped": [{"path": shown_path(e.path), "reason": e.reason, "detail": shown_path(e.detail)}
                        for e in self.skipped],
            "warnings": list(self.warnings),
            "split_by": self.split_by,
            "max_tilt_deg": self.max_tilt_deg,
        }

    def describe(self) -> list[str]:
        """The summary as lines for people: what is used, and what is skipped by reason."""
        summary = self.summary()
        lines = [f"inventory: {summary['files']} files; used {summary['used_files']} files = "
                 f"{summary['used_images']} images of {summary['patients']} patients, {summary['studies']} "
                 f"studies, {summary['series']} series (split by {self.split_by})"]
        skipped = {reason: count for reason, count in summary["reasons"].items() if reason != "ok"}
        if skipped:
            lines.append("skipped: " + ", ".join(f"{count} {reason}" for reason, count in skipped.items()))
        return lines

    def series_rows(self) -> list[dict[str, Any]]:
        """One row per series (patient, study, series; files without a series share one row): images used,
        files by skip reason, and the slice thickness, kernel, field of view, pixel spacing and tilt seen."""
        groups: dict[tuple[str, str, str], list[Entry]] = defaultdict(list)
        for entry in self.entries:
            groups[(entry.patient, entry.study, entry.series)].append(entry)
        rows = []
        for (patient, study, series), entries in groups.items():
            label = next((f"#{e.series_number} {e.series_description}".strip() if e.series_number is not None
                          else e.series_description for e in entries if e.series), "")
            rows.append({
                "patient": patient, "study": study, "series": series, "label": label,
                "images": sum(e.frames for e in entries if e.used),
                "reasons": dict(Counter(e.reason for e in entries)),
                "slice_thickness_mm": _spread(e.slice_thickness_mm for e in entries),
                "kernel": ", ".join(sorted({e.kernel for e in entries if e.kernel})),
                "fov_mm": _spread(e.fov_mm for e in entries),
                "spacing_mm": _spread(e.spacing_mm for e in entries),
                "tilt_deg": _spread(e.tilt_deg for e in entries if e.tilt_deg is not None and e.tilt_deg >= 0.5),
            })
        return sorted(rows, key=lambda row: (row["patient"] == "", row["patient"], row["study"], row["label"]))


def list_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Every file under ``sources`` (folders walked at any depth, files as given), sorted, absolute.

    Hidden entries (a leading dot) are left out, and so are the JSON sidecars of NIfTI volumes (they belong to
    their volume). A folder that cannot be listed is listed itself (``scan`` says why it is skipped), and so are
    names that are not regular files (FIFOs, sockets, broken or looping links). Raises InputError for a source
    that does not exist.
    """
    files: set[Path] = set()
    for source in sources:
        path = Path(source)
        if path.is_file():
            files.add(_absolute(path))
            continue
        if not path.is_dir():
            raise InputError(source, "no such file or folder")
        unlisted: list[OSError] = []
        for folder, folders, names in os.walk(path, onerror=unlisted.append):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in names:
                if not name.startswith("."):
                    files.add(_absolute(Path(folder, name)))
        files.update(_absolute(Path(error.filename)) for error in unlisted if error.filename is not None)
    sidecars = {sidecar_path(path) for path in files if is_nifti(path)}
    return sorted((path for path in files if path not in sidecars), key=str)


def _absolute(path: Path) -> Path:
    """The path resolved; a link that loops stays as it is (scan says why it is skipped)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's "Symlink loop"
        return path.absolute()


def scan(sources: Sequence[str | os.PathLike], *, split_by: str = "auto", max_tilt_deg: float = MAX_TILT_DEG,
         progress: Callable[[int, int], None] | None = None, files: Sequence[Path] | None = None) -> Inventory:
    """Decide every file under ``sources``: an ``Inventory`` with one ``Entry`` per file.

    ``split_by``: "auto" (by PatientID; by study when it is empty; by ID, birth date and sex when one ID holds
    different people), "patient" or "study". ``max_tilt_deg``: a slice normal farther than this from the
    head-foot axis is "not-axial". ``progress(done, total)`` is called after each file; ``files``, when given,
    is the listing of ``sources`` already made by ``list_files``. Raises InputError for a missing source, an
    unknown ``split_by`` or a bad ``max_tilt_deg``.
    """
    if split_by not in SPLIT_BY:
        raise InputError(None, f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    if not (isinstance(max_tilt_deg, (int, float)) and 0 <= max_tilt_deg <= 90):
        raise InputError(None, f"max_tilt_deg must lie in 0..90, got {max_tilt_deg!r}")
    listing = list(files) if files is not None else list_files(sources)
    entries = []
    for done, path in enumerate(listing, 1):
        entries.append(decide(path, max_tilt_deg))
        if progress is not None:
            progress(done, len(listing))
    _mark_duplicates(entries)
    warnings = _assign_keys(entries, split_by)
    return Inventory([str(s) for s in sources], entries, warnings, split_by, float(max_tilt_deg))


def write_inventory(inventory: Inventory, path: str | os.PathLike, *, force: bool = False) -> Path:
    """One row per file (``Entry.row``) to ``path``: .csv (a header line) or .jsonl; written atomically.

    Raises InputError for another suffix, OutputError when the file exists and not ``force``.
    """
    from ctgen.io.atomic import atomic_file

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INVENTORY_SUFFIXES:
        raise InputError(path, f"unsupported inventory type {suffix or '(none)'}; use .csv or .jsonl")
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
        writer.writeheader()
        for entry in inventory.entries:
            writer.writerow({k: "" if v is None else v for k, v in entry.row().items()})
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(entry.row()) + "\n" for entry in inventory.entries)
    with atomic_file(path, force=force, mode="w") as handle:
        handle.write(text)
    return path


def _mark_duplicates(entries: list[Entry]) -> None:
    """Usable files that repeat a SOP Instance UID become "duplicate": the lossless copy is kept (else the
    first by path)."""
    copies: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.used and entry.sop_instance:
            copies[entry.sop_instance].append(entry)
    for group in copies.values():
        if len(group) > 1:
            kept = min(group, key=lambda entry: (entry.lossy, entry.path))
            for entry in group:
                if entry is not kept:
                    entry.reason, entry.detail = "duplicate", f"same SOP Instance UID as {kept.path}"


def split_keys(entries: Sequence[Entry], split_by: str) -> tuple[list[str], list[str]]:
    """The patient key of every entry under ``split_by`` ("" for files that are not images we know), and the
    warnings about PatientIDs that hold different people (birth dates or sexes differ between its files)."""
    identities: dict[str, set[tuple[str, str]]] = defaultdict(set)
    studies: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        if entry.kind and entry.patient_id:
            identities[entry.patient_id].add((entry.birth_date, entry.sex))
            studies[entry.patient_id].add(entry.study_uid)
    conflicted = {pid for pid, seen in identities.items() if len(seen) > 1}
    warnings = []
    for pid in sorted(conflicted, key=patient_key):
        people = len(identities[pid])
        action = {"auto": f"split into {people} patients by birth date and sex (--split-by patient keeps them "
                          "together)",
                  "patient": "kept as one patient (--split-by patient)",
                  "study": "split by study (--split-by study)"}[split_by]
        warnings.append(f"patient {patient_key(pid)}: one PatientID holds {len(studies[pid])} studies with "
                        f"{people} different birth dates or sexes; {action}")
    keys = []
    for entry in entries:
        if not entry.kind:
            keys.append("")
        elif split_by == "study":
            keys.append(entry.study)
        elif not entry.patient_id:  # anonymised away: each study is its own patient (each volume, for NIfTI)
            keys.append(patient_key("", _study_value(entry)))
        elif split_by == "auto" and entry.patient_id in conflicted:
            keys.append(patient_key("\x00".join((entry.patient_id, entry.birth_date, entry.sex))))
        else:
            keys.append(patient_key(entry.patient_id))
    return keys, warnings


def _study_value(entry: Entry) -> str:
    """What identifies the entry's study: its UID; a volume without one is its own study; else the series or
    the folder."""
    if entry.study_uid:
        return entry.study_uid
    if entry.kind == "nifti":
        return entry.path
    return entry.series_uid or str(Path(entry.path).parent)


def _assign_keys(entries: list[Entry], split_by: str) -> list[str]:
    """Fill in patient, study and series keys; return warnings about IDs that hold different people."""
    for entry in entries:
        if entry.kind:
            entry.study = _key("study", _study_value(entry))
            entry.series = _key("series", entry.series_uid or (entry.path if entry.kind == "nifti"
                                                               else str(Path(entry.path).parent)))
    keys, warnings = split_keys(entries, split_by)
    for entry, key in zip(entries, keys):
        entry.patient = key
    return warnings


# ------------------------------------------------------------------------------------------ helpers
def _key(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:16]


def _spread(values: Iterable[float | None]) -> str:
    numbers = sorted({round(v, 2) for v in values if v is not None})
    if not numbers:
        return ""
    return f"{numbers[0]:g}" if len(numbers) == 1 else f"{numbers[0]:g}-{numbers[-1]:g}"
