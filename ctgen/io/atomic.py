"""Atomic, no-overwrite writing: the one staging discipline behind every file and folder ctgen writes.

A file is written to a hidden temporary sibling (``.NAME.ctgen-PID-HEX.tmp``), flushed, fsynced and then
committed: renamed over the target with ``force``, otherwise *linked* into place, which fails when the
target exists, so two runs can never overwrite each other's files, however they interleave. A folder is
built as a hidden sibling and renamed into place. On any exception (Ctrl-C and SIGTERM included, see
``ctgen.cli``) the temporary is removed. While a ``Claims`` transaction is open (``with Claims():``, as every
command's run holds one), every file, folder and parent folder committed here is recorded in it, and a
failed run takes them all back: new ones are removed, files replaced with ``force`` get their old content back.
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
            backup = _backup(path)
            try:
                os.replace(temporary, path)
            except BaseException:
                if backup is not None:
                    os.unlink(backup)
                raise
            _claimed(path, "file", backup)
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
        _claimed(path, "file")
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
        _make_folders(path.parent)
        with open(temporary, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        commit(temporary, path, force=force)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise _output_error(exc, path) from None
        raise


def _output_error(error: OSError, path: Path) -> OutputError:
    """An OSError as one line naming the file. Writers that wrap the system's error (pydicom re-raises it with
    the tag and a whole traceback in its message) are looked through to the error they wrap."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return OutputError(cause.filename or path, cause.strerror)
        cause = cause.__cause__ or cause.__context__
    text = str(error).strip()
    return OutputError(path, text.splitlines()[0] if text else type(error).__name__)


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
        _make_folders(staging.parent)
        staging.mkdir()
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
        _claimed(path, "tree")
    except OSError as exc:
        raise _output_error(exc, path) from None
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


_OPEN: list[Claims] = []  # the transactions open in this process, innermost last


_INTERRUPTED = [False]  # set by the command line's SIGINT/SIGTERM handler (``note_interrupt``)


def note_interrupt() -> None:
    """Remember that the process was interrupted: the next file committed raises KeyboardInterrupt, even when
    the one the signal handler raised was swallowed on its way (C code that clears pending errors can lose it)."""
    _INTERRUPTED[0] = True


def _claimed(path: Path, kind: str, backup: Path | None = None) -> None:
    if _INTERRUPTED[0]:  # the file joins the transaction first, so the rollback takes it back too
        if _OPEN:
            _OPEN[-1].add(path, kind=kind, backup=backup)
        raise KeyboardInterrupt
    if _OPEN:
        _OPEN[-1].add(path, kind=kind, backup=backup)
    elif backup is not None:
        with contextlib.suppress(OSError):
            os.unlink(backup)


def _backup(path: Path) -> Path | None:
    """A hard link to the file that ``force`` is about to replace, so that a failed run can put it back (only
    while a transaction is open, and only where the file system has hard links)."""
    if not _OPEN or not os.path.isfile(path) or os.path.islink(path):
        return None
    backup = temporary_path(path, "old")
    try:
        os.link(path, backup)
    except OSError:
        return None
    return backup


def _make_folders(folder: Path) -> None:
    """``mkdir -p folder``, recording each folder it creates in the open transaction (removed again, if empty,
    when the run fails)."""
    missing = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir()
        except FileExistsError:
            if not each.is_dir():
                raise
            continue
        _claimed(each, "folder")


class Claims:
    """A transaction of the outputs one run makes, so that a failed or interrupted run takes them all back.

    ``with Claims():`` records every file, folder (``atomic_folder``) and parent folder that ``ctgen.io.atomic``
    commits inside the block, from any thread. When the block raises, ``rollback``; when it ends well, the
    records pass to the enclosing transaction (or, at the outermost, are final). ``add(path)`` records a file
    by hand. ``rollback()`` deletes new files and folders (created parent folders only if empty) and puts back
    the files that were replaced with ``force``.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._entries: list[tuple[Path, str, Path | None]] = []

    def add(self, path: Path, *, kind: str = "file", backup: Path | None = None) -> None:
        self.paths.append(Path(path))
        self._entries.append((Path(path), kind, backup))

    def rollback(self) -> None:
        for path, kind, backup in reversed(self._entries):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                elif kind == "file":
                    os.unlink(path)
                elif kind == "folder":
                    os.rmdir(path)
                else:
                    import shutil

                    shutil.rmtree(path)
        self._entries.clear()
        self.paths.clear()

    def __enter__(self) -> Claims:
        _OPEN.append(self)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(keep=kind is None)

    def close(self, *, keep: bool) -> None:
        """End the transaction: keep the outputs (handing them to the enclosing one) or roll them back."""
        with contextlib.suppress(ValueError):
            _OPEN.remove(self)
        if not keep:
            self.rollback()
            return
        if _OPEN:
            _OPEN[-1]._entries.extend(self._entries)
            _OPEN[-1].paths.extend(self.paths)
        else:
            for _path, _kind, backup in self._entries:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
        self._entries.clear()
        self.paths.clear()
