"""Atomic, no-overwrite file writing: the one primitive behind every file ctgen writes but DICOM series
(which roll back whole series in ctgen.dicom.write)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ctgen.errors import OutputError

__all__ = ["atomic_file"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, force: bool, mode: str = "wb") -> Iterator[IO]:
    """Open a hidden temporary sibling of ``path`` (mode "wb" or "w", UTF-8) and rename it over ``path``
    when the block ends without an exception; otherwise delete it. Parent folders are created; the file
    gets the usual umask permissions.

    Raises OutputError if ``path`` is a folder, exists and not ``force``, or cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a folder")
    if path.exists() and not force:
        raise OutputError(path, "already exists (use --force to overwrite)")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # creation inside the try: a Ctrl-C right after the file appears must still remove it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise OutputError(path, exc.strerror or str(exc)) from None
        raise
