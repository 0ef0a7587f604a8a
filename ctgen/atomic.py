"""Atomic, no-overwrite writing: the one staging discipline behind every file and folder ctgen writes.

A file is written to a hidden temporary sibling (``.NAME.ctgen-PID-HEX.tmp``), flushed, fsynced and then
committed: renamed over the target with ``force``, otherwise *linked* into place, which fails when the
target exists, so two runs can never overwrite each other's files, however they interleave. A folder is
built as a hidden sibling and renamed into place. On any exception (Ctrl-C and SIGTERM included, see
``ctgen.cli``) the temporary is removed; a ``Claims`` record removes the files a run already committed.
Temporaries left by a process that was killed outright (SIGKILL, power loss) carry its PID:
``remove_dead_temporaries`` recognises and deletes them the next time ctgen writes into that folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ctgen.errors import OutputError

__all__ = ["Claims", "atomic_file", "atomic_folder", "commit", "remove_dead_temporaries", "temporary_path"]

_TEMPORARY = re.compile(r"^\..+\.ctgen-(\d+)-[0-9a-f]+\.(tmp|old)$")


def temporary_path(path: str | os.PathLike, suffix: str = "tmp") -> Path:
    """A hidden sibling of ``path`` that names this process: ``.NAME.ctgen-PID-HEX.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.ctgen-{os.getpid()}-{os.urandom(4).hex()}.{suffix}")


def remove_dead_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that killed ctgen processes left in ``folder``; return them.

    Only names of ``temporary_path``'s form whose PID is no longer running are touched.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                import shutil  # here: shutil (with bz2, lzma) costs start-up time

                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def commit(temporary: Path, path: Path, *, force: bool) -> None:
    """Move a finished temporary file onto ``path``: replace it with ``force``, else claim it exclusively.

    Raises OutputError (and removes the temporary) when ``path`` exists and not ``force``.
    """
    try:
        if force:
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)  # atomic and exclusive: EEXIST when another process got there first
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise OutputError(path, "already exists (use --force to overwrite)") from None
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.lexists(path):  # a file system without hard links: check, then rename
                raise OutputError(path, "already exists (use --force to overwrite)") from None
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, force: bool, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` (mode "wb" or "w", UTF-8) and commit it to ``path`` when the block
    ends without an exception (see ``commit``); otherwise delete it. Parent folders are created.

    Raises OutputError if ``path`` is a folder, exists and not ``force`` (checked before and at the commit),
    or cannot be written (a full disk included).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a folder")
    if not force and os.path.lexists(path):
        raise OutputError(path, "already exists (use --force to overwrite)")
    temporary = temporary_path(path)
    try:  # the temporary is created inside the try: a Ctrl-C right after it appears still removes it
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        commit(temporary, path, force=force)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise OutputError(exc.filename or path, exc.strerror or str(exc)) from None
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder of ``path``; rename it to ``path`` when the block succeeds.

    With ``force`` an existing folder at ``path`` is replaced (and restored if the rename fails); without it
    an existing ``path`` is an OutputError. The temporary folder is removed on any exception.
    """
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise OutputError(path, "already exists (use --force to replace it)")
    staging = temporary_path(path)
    old = None
    try:
        staging.mkdir(parents=True)
        yield staging
        if os.path.lexists(path):
            if not path.is_dir():
                raise OutputError(path, "exists and is not a folder")
            old = temporary_path(path, "old")
            os.replace(path, old)
        try:
            os.rename(staging, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
    except OSError as exc:
        raise OutputError(exc.filename or path, exc.strerror or str(exc)) from None
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class Claims:
    """The files one run has committed, so that a failed or interrupted run can take them all back.

    ``add(path)`` after each commit; ``rollback()`` deletes every file added (not ones that existed before
    and were replaced with force, which cannot be restored).
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, path: Path) -> None:
        self.paths.append(Path(path))

    def rollback(self) -> None:
        for path in reversed(self.paths):
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.paths.clear()
