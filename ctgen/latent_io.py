"""Latent vectors in files: .npy, .npz, .csv and JSON lines, written by ``ctgen encode`` and read by ``ctgen decode``."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctgen.errors import InputError
from ctgen.atomic import atomic_file

LATENT_SUFFIXES = (".npz", ".npy", ".csv", ".jsonl", ".ndjson")
_KEYS = ("mu", "z")  # what a vector is called in a file, in order of preference


def floats(row: np.ndarray) -> str:
    """float32 values as the shortest text that reads back to the same float32, comma-separated."""
    return ",".join(str(value) for value in np.asarray(row, dtype=np.float32))


def json_line(file: str, mu: np.ndarray, logvar: np.ndarray | None, warnings: Sequence[str] = ()) -> str:
    line = f'{{"file": {json.dumps(file)}, "mu": [{floats(mu)}]'
    if logvar is not None:
        line += f', "logvar": [{floats(logvar)}]'
    if warnings:
        line += f', "warnings": {json.dumps(list(warnings))}'
    return line + "}"


def write_latents(path: Path, files: Sequence[str], mu: np.ndarray, logvar: np.ndarray | None, *, force: bool,
                  model_name: str | None, warnings: Sequence[Sequence[str]] | None = None) -> None:
    """Write encode's results: .npz (files, mu[, logvar][, warnings]), .npy (mu), .csv or JSON lines; atomically.

    ``warnings``: per file, what makes the slice unlike the model's training data; recorded when any file has
    one: .npz array "warnings" (one string per file, "; "-joined, "" for none), a CSV column "warnings" after
    the numbers, a "warnings" list on the JSON lines that have one (.npy holds mu only).
    """
    suffix = path.suffix.lower()
    joined = ["; ".join(found) for found in warnings] if warnings is not None and any(warnings) else None
    if suffix == ".npz":
        arrays = {"files": np.array(files, dtype=str), "mu": mu}
        if logvar is not None:
            arrays["logvar"] = logvar
        if joined is not None:
            arrays["warnings"] = np.array(joined, dtype=str)
        if model_name:
            arrays["model"] = np.array(model_name)
        with atomic_file(path, force=force) as handle:
            np.savez(handle, **arrays)
    elif suffix == ".npy":
        with atomic_file(path, force=force) as handle:
            np.save(handle, mu, allow_pickle=False)
    elif suffix == ".csv":
        width = mu.shape[1]
        header = ["file", *(f"mu_{i}" for i in range(width))]
        if logvar is not None:
            header += [f"logvar_{i}" for i in range(width)]
        if joined is not None:
            header.append("warnings")
        with atomic_file(path, force=force, mode="w") as handle:
            handle.write(",".join(header) + "\n")
            for index, file in enumerate(files):
                cells = [_csv_cell(file), floats(mu[index])]
                if logvar is not None:
                    cells.append(floats(logvar[index]))
                if joined is not None:
                    cells.append(_csv_cell(joined[index]))
                handle.write(",".join(cells) + "\n")
    else:
        with atomic_file(path, force=force, mode="w") as handle:
            for index, file in enumerate(files):
                found = warnings[index] if warnings is not None else ()
                handle.write(json_line(file, mu[index], None if logvar is None else logvar[index], found) + "\n")


def _csv_cell(text: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def read_latents(source: str) -> np.ndarray:
    """Latent vectors float32 (N, L) from a file or "-" (stdin: JSON lines or CSV).

    .npy: (N, L) or (L,); .npz: array "mu" or "z" (or its only array); .csv: columns mu_* or z_*
    (or all numeric columns, with or without a header); JSON lines: objects with "mu" or "z", or bare lists.
    Raises InputError naming the source for unreadable input. Width and finiteness are checked by the caller.
    """
    if source == "-":
        return _parse_text(sys.stdin.read(), "<stdin>")
    path = Path(source)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _as_matrix(np.load(path, allow_pickle=False), path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = [key for key in _KEYS if key in archive.files] or archive.files
                if len(names) != 1 and not any(key in archive.files for key in _KEYS):
                    raise InputError(path, f"no array named mu or z (has {', '.join(archive.files) or 'none'})")
                return _as_matrix(archive[names[0]], path)
        if suffix in (".csv", ".jsonl", ".ndjson", ".json", ".txt"):
            return _parse_text(path.read_text(encoding="utf-8"), str(path))
    except InputError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read latent vectors ({str(error).splitlines()[0] if str(error) else error})")
    raise InputError(path, f"unsupported latent file type {suffix or '(none)'}; use {', '.join(LATENT_SUFFIXES)}")


def _as_matrix(array: np.ndarray, source) -> np.ndarray:
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise InputError(source, f"expected numeric latent vectors (N, L), got {array.dtype} {array.shape}")
    return array.astype(np.float32)


def _parse_text(text: str, source: str) -> np.ndarray:
    stripped = text.lstrip()
    if not stripped:
        raise InputError(source, "no latent vectors")
    if stripped[0] in "{[":
        return _parse_json_lines(text, source)
    return _parse_csv(text, source)


def _parse_json_lines(text: str, source: str) -> np.ndarray:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(source, f"line {number}: not JSON ({error.msg})") from None
        if isinstance(record, dict):
            key = next((k for k in _KEYS if k in record), None)
            if key is None:
                raise InputError(source, f'line {number}: no "mu" or "z" key')
            record = record[key]
        if not isinstance(record, list) or not all(isinstance(v, (int, float)) or v is None for v in record):
            raise InputError(source, f"line {number}: expected a list of numbers")
        rows.append([np.nan if value is None else value for value in record])
    return _rows(rows, source)


def _parse_csv(text: str, source: str) -> np.ndarray:
    table = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    names = [cell.strip() for cell in table[0]]
    first_row = 1
    if all(_is_number(name) for name in names):
        columns = list(range(len(names)))
    else:
        columns = ([i for i, name in enumerate(names) if name.startswith("mu_")]
                   or [i for i, name in enumerate(names) if name.startswith("z_")]
                   or [i for i, name in enumerate(names) if name not in ("file", "warnings")])
        table, first_row = table[1:], 2
    rows = []
    for number, row in enumerate(table, start=first_row):
        try:
            rows.append([float(row[i]) for i in columns])
        except (IndexError, ValueError):
            raise InputError(source, f"row {number}: expected {len(columns)} numbers") from None
    return _rows(rows, source)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _rows(rows: list[list[float]], source: str) -> np.ndarray:
    if not rows:
        raise InputError(source, "no latent vectors")
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise InputError(source, f"rows have different widths ({', '.join(map(str, sorted(widths)))})")
    return np.array(rows, dtype=np.float32)


def check_latents(latents: np.ndarray, latent_size: int, source: str) -> None:
    """InputError unless latents are (N, latent_size) and finite."""
    if latents.shape[1] != latent_size:
        raise InputError(source, f"latent vectors have width {latents.shape[1]}; the model expects {latent_size}")
    bad = ~np.isfinite(latents).all(axis=1)
    if bad.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(bad)[:5])
        raise InputError(source, f"NaN or infinite values in row {rows}")


def latent_names(source: str, count: int) -> list[str] | None:
    """The source name of each of the ``count`` latent rows in ``source`` (``encode``'s "files": the .npz array,
    the CSV column "file", the JSON lines' "file" key), or None when the file names none (.npy, stdin, bare
    rows) or not one per row. Only for labels: it never raises."""
    path = Path(source)
    names: list[str] | None = None
    try:
        if source == "-" or not path.is_file():
            return None
        suffix = path.suffix.lower()
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = [str(name) for name in archive["files"]] if "files" in archive.files else None
        elif suffix == ".csv":
            table = [row for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"))) if row]
            if table and "file" in (header := [cell.strip() for cell in table[0]]):
                names = [row[header.index("file")] for row in table[1:]]
        elif suffix in (".jsonl", ".ndjson", ".json", ".txt"):
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            names = [record["file"] for record in records if isinstance(record, dict) and "file" in record]
    except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError):
        return None
    return [Path(name).name for name in names] if names is not None and len(names) == count else None
