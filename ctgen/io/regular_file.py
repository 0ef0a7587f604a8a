"""Opening input files that must be regular files: a FIFO, a device or a folder under a file's name is refused
before any read, so that no command waits on a pipe that nobody writes, or reads a device without end.

The file is opened non-blocking (opening a FIFO without a writer would block) and checked with ``fstat`` on
the open descriptor, so that what was checked is what is read.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from ctgen.errors import _PathError

__all__ = ["open_regular", "read_regular"]


def open_regular(path: str | os.PathLike, error: type[_PathError]) -> BinaryIO:
    """``path`` opened for binary reading when it is a regular file.

    Raises FileNotFoundError when it does not exist (the caller says what is missing), and ``error(path,
    reason)`` when it is not a regular file or cannot be opened.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise error(path, f"not a regular file ({_kind(mode)})")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int, error: type[_PathError], *,
                 missing: str | None = None) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``max_bytes`` bytes. Raises as
    ``open_regular`` (``error(path, missing)`` instead of FileNotFoundError when ``missing`` is given), and
    ``error`` for a larger file."""
    try:
        stream = open_regular(path, error)
    except FileNotFoundError:
        if missing is None:
            raise
        raise error(path, missing) from None
    with stream:
        try:
            if os.fstat(stream.fileno()).st_size > max_bytes:
                raise error(path, f"larger than {_size(max_bytes)}; refused")
            data = stream.read(max_bytes + 1)
        except OSError as exc:
            raise error(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(path, f"larger than {_size(max_bytes)}; refused")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


def _size(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift and count % (1 << shift) == 0:
            return f"{count >> shift} {unit}"
    return f"{count:,} bytes"
