"""Latent vectors in files: .npy, .npz, .csv and JSON lines, written by ``ctgen encode`` and read by ``ctgen decode``.

Every format but .npy records the model that wrote the vectors (``LatentModel``: the card's name and its encoder's
sha256, the identity the provenance of ctgen's outputs uses): .npz arrays "model" and "encoder_sha256", CSV
columns of these names after the numbers, the same two keys on every JSON line. An .npy file
holds the numbers only: numpy refuses headers with keys other than its own three, so it cannot say.

``encode --factors`` adds the model's reading of each bound factor (``factor_columns``): .npz arrays, CSV columns
and JSON line keys named by the factor ("rotation_deg"); the readers take only the vectors and ignore them.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.errors import InputError
from ctgen.io.atomic import atomic_file

LATENT_SUFFIXES = (".npz", ".npy", ".csv", ".jsonl", ".ndjson")
_KEYS = ("mu", "z")  # what a vector is called in a file, in order of preference
_MODEL_KEYS = ("model", "encoder_sha256")  # the model's record, under these names in every format


@dataclass(frozen=True)
class LatentModel:
    """The model a latent file says wrote it: the card's ``name`` and its encoder's ``encoder_sha256`` (None in
    files that name the model only, as .npz files of earlier versions do)."""

    name: str
    encoder_sha256: str | None = None

    @classmethod
    def of(cls, card: Any) -> LatentModel:
        """The record of a loaded model's card (``ctgen.runtime.card.ModelCard``)."""
        return cls(card.name, card.encoder_sha256)

    def same_as(self, other: LatentModel) -> bool:
        """The same model: the same encoder bytes, or the same name where either side lacks a checksum."""
        if self.encoder_sha256 and other.encoder_sha256:
            return self.encoder_sha256 == other.encoder_sha256
        return self.name == other.name

    def __str__(self) -> str:
        return f"'{self.name}'" + (f" (sha256 {self.encoder_sha256[:12]}…)" if self.encoder_sha256 else "")

    def record(self) -> dict[str, str]:
        return {"model": self.name, **({"encoder_sha256": self.encoder_sha256} if self.encoder_sha256 else {})}


@dataclass(frozen=True)
class LatentFile:
    """What ``load_latents`` read: ``vectors`` float32 (N, L) and the distinct ``models`` the file records, in
    the order met (empty for .npy files, hand-made files and files of earlier versions)."""

    vectors: np.ndarray
    models: tuple[LatentModel, ...] = ()

    def foreign(self, model: LatentModel) -> LatentModel | None:
        """The first recorded model that is not ``model``, or None when every record (or none) is ``model``."""
        return next((recorded for recorded in self.models if not recorded.same_as(model)), None)


def floats(row: np.ndarray) -> str:
    """float32 values as the shortest text that reads back to the same float32, comma-separated."""
    return ",".join(str(value) for value in np.asarray(row, dtype=np.float32))


_RESERVED = ("file", "files", "mu", "z", "logvar", "warnings", *_MODEL_KEYS)


def factor_columns(readings: dict[str, Any]) -> dict[str, Any]:
    """The model's readings of bound factors ({factor: values}) under the names a latent file gives them: the
    factor's own name, "factor_<name>" where that is one of the file's own fields."""
    return {(f"factor_{name}" if name in _RESERVED or name.startswith(("mu_", "z_", "logvar_")) else name): values
            for name, values in readings.items()}


def json_line(file: str, mu: np.ndarray, logvar: np.ndarray | None, warnings: Sequence[str] = (),
              model: LatentModel | None = None, factors: dict[str, float] | None = None) -> str:
    line = f'{{"file": {json.dumps(file)}, "mu": [{floats(mu)}]'
    if logvar is not None:
        line += f', "logvar": [{floats(logvar)}]'
    for name, value in (factors or {}).items():
        line += f", {json.dumps(name)}: {_number_text(value)}"
    if warnings:
        line += f', "warnings": {json.dumps(list(warnings))}'
    if model is not None:
        line += ", " + json.dumps(model.record())[1:-1]
    return line + "}"


def json_lines(files: Sequence[str], mu: np.ndarray, logvar: np.ndarray | None, *, model: LatentModel | None,
               warnings: Sequence[Sequence[str]] | None = None,
               factors: dict[str, np.ndarray] | None = None) -> Iterator[str]:
    """encode's rows as JSON lines, each ending in a newline (what ``write_latents`` writes to .jsonl and ``ctgen
    encode`` prints): ``mu`` float32 (N, L), ``logvar`` (N, L) or None, ``warnings`` and ``factors`` as there."""
    for index, file in enumerate(files):
        readings = {name: values[index] for name, values in (factors or {}).items()}
        yield json_line(file, mu[index], None if logvar is None else logvar[index],
                        warnings[index] if warnings is not None else (), model, readings) + "\n"


def _number_text(value: float) -> str:
    """A reading as JSON/CSV text: the shortest float32 text, null/empty for NaN."""
    return str(np.float32(value)) if np.isfinite(value) else "null"


def write_latents(path: Path, files: Sequence[str], mu: np.ndarray, logvar: np.ndarray | None, *, force: bool,
                  model: LatentModel | None, warnings: Sequence[Sequence[str]] | None = None,
                  factors: dict[str, np.ndarray] | None = None) -> None:
    """Write encode's results: .npz (files, mu[, logvar][, warnings], model), .npy (mu), .csv or JSON lines;
    atomically. ``model`` is recorded as the module says (not in .npy).

    ``warnings``: per file, what makes the slice unlike the model's training data; recorded when any file has
    one: .npz array "warnings" (one string per file, "; "-joined, "" for none), a CSV column "warnings" after
    the numbers, a "warnings" list on the JSON lines that have one (.npy holds mu only).

    ``factors``: {name: float (N,)}, the model's reading of each bound factor (names from ``factor_columns``):
    .npz arrays, CSV columns after the numbers, JSON line keys after "mu" (not in .npy).
    """
    suffix = path.suffix.lower()
    factors = factors or {}
    joined = ["; ".join(found) for found in warnings] if warnings is not None and any(warnings) else None
    if suffix == ".npz":
        arrays = {"files": np.array(files, dtype=str), "mu": mu}
        if logvar is not None:
            arrays["logvar"] = logvar
        arrays.update({name: np.asarray(values, dtype=np.float32) for name, values in factors.items()})
        if joined is not None:
            arrays["warnings"] = np.array(joined, dtype=str)
        if model is not None:
            arrays.update({key: np.array(value) for key, value in model.record().items()})
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
        header += list(factors)
        record = model.record() if model is not None else {}
        header += list(record)
        if joined is not None:
            header.append("warnings")
        model_cells = [_csv_cell(value) for value in record.values()]
        with atomic_file(path, force=force, mode="w") as handle:
            handle.write(",".join(header) + "\n")
            for index, file in enumerate(files):
                cells = [_csv_cell(file), floats(mu[index])]
                if logvar is not None:
                    cells.append(floats(logvar[index]))
                cells += [_number_text(values[index]).replace("null", "") for values in factors.values()]
                cells += model_cells
                if joined is not None:
                    cells.append(_csv_cell(joined[index]))
                handle.write(",".join(cells) + "\n")
    else:
        with atomic_file(path, force=force, mode="w") as handle:
            handle.writelines(json_lines(files, mu, logvar, model=model, warnings=warnings, factors=factors))


def _csv_cell(text: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def read_latents(source: str) -> np.ndarray:
    """Latent vectors float32 (N, L) of ``load_latents``."""
    return load_latents(source).vectors


def load_latents(source: str) -> LatentFile:
    """Latent vectors float32 (N, L) from a file or "-" (stdin: JSON lines or CSV), with the models it records.

    .npy: (N, L) or (L,); .npz: array "mu" or "z" (or its only array); .csv: columns mu_* or z_*
    (or all numeric columns, with or without a header);
    JSON lines: objects with "mu" or "z", or bare lists. Raises InputError naming the source for unreadable
    input. Width and finiteness are checked by the caller (``check_latents``), the model too (``LatentFile``).
    """
    if source == "-":
        return _parse_text(sys.stdin.read(), "<stdin>")
    path = Path(source)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return LatentFile(_as_matrix(np.load(path, allow_pickle=False), path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = [key for key in _KEYS if key in archive.files] or archive.files
                if len(names) != 1 and not any(key in archive.files for key in _KEYS):
                    raise InputError(path, f"no array named mu or z (has {', '.join(archive.files) or 'none'})")
                record = {key: archive[key] for key in _MODEL_KEYS if key in archive.files}
                return LatentFile(_as_matrix(archive[names[0]], path), _models([_model_of(record)]))
        if suffix in (".csv", ".jsonl", ".ndjson", ".json", ".txt"):
            return _parse_text(path.read_text(encoding="utf-8"), str(path))
    except InputError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read latent vectors ({str(error).splitlines()[0] if str(error) else error})")
    raise InputError(path, f"unsupported latent file type {suffix or '(none)'}; use {', '.join(LATENT_SUFFIXES)}")


def _model_of(record: Any) -> LatentModel | None:
    """The model a record names ({"model": name[, "encoder_sha256": hex]}, values str or 0-d str arrays)."""
    if not isinstance(record, dict):
        return None
    name, checksum = (record.get(key) for key in _MODEL_KEYS)
    name = name.item() if isinstance(name, np.ndarray) and name.ndim == 0 else name
    checksum = checksum.item() if isinstance(checksum, np.ndarray) and checksum.ndim == 0 else checksum
    checksum = checksum if isinstance(checksum, str) and checksum else None
    if not isinstance(name, str) or not (name or checksum):
        return None
    return LatentModel(name, checksum)


def _models(found: Sequence[LatentModel | None]) -> tuple[LatentModel, ...]:
    return tuple(dict.fromkeys(model for model in found if model is not None))


def _as_matrix(array: np.ndarray, source) -> np.ndarray:
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise InputError(source, f"expected numeric latent vectors (N, L), got {array.dtype} {array.shape}")
    return array.astype(np.float32)


def _parse_text(text: str, source: str) -> LatentFile:
    stripped = text.lstrip()
    if not stripped:
        raise InputError(source, "no latent vectors")
    if stripped[0] in "{[":
        return _parse_json_lines(text, source)
    return _parse_csv(text, source)


def _parse_json_lines(text: str, source: str) -> LatentFile:
    rows, found = [], []
    for number, record in _json_records(text, source):
        if isinstance(record, dict):
            found.append(_model_of(record))
            key = next((k for k in _KEYS if k in record), None)
            if key is None:
                raise InputError(source, f'line {number}: no "mu" or "z" key')
            record = record[key]
        if not isinstance(record, list) or not all(isinstance(v, (int, float)) or v is None for v in record):
            raise InputError(source, f"line {number}: expected a list of numbers")
        rows.append([np.nan if value is None else value for value in record])
    return LatentFile(_rows(rows, source), _models(found))


def _json_records(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each JSON line; a whole text that is one JSON object (the explorer's export,
    written over several lines) is one record."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        yield 1, whole
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(source, f"line {number}: not JSON ({error.msg})") from None


def _parse_csv(text: str, source: str) -> LatentFile:
    table = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    names = [cell.strip() for cell in table[0]]
    first_row = 1
    found: list[LatentModel | None] = []
    if all(_is_number(name) for name in names):
        columns = list(range(len(names)))
    else:
        columns = ([i for i, name in enumerate(names) if name.startswith("mu_")]
                   or [i for i, name in enumerate(names) if name.startswith("z_")]
                   or [i for i, name in enumerate(names) if name not in ("file", "warnings", *_MODEL_KEYS)])
        table, first_row = table[1:], 2
        named = {key: names.index(key) for key in _MODEL_KEYS if key in names}
        found = [_model_of({key: row[i] for key, i in named.items() if i < len(row)}) for row in table] if named else []
    rows = []
    for number, row in enumerate(table, start=first_row):
        try:
            rows.append([float(row[i]) for i in columns])
        except (IndexError, ValueError):
            raise InputError(source, f"row {number}: expected {len(columns)} numbers") from None
    return LatentFile(_rows(rows, source), _models(found))


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
