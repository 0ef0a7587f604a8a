"""Keep what native libraries print off the terminal: file descriptor 2 captured around one call.

Decoders (GDCM's libjpeg and OpenJPEG, panics in pylibjpeg-rle's Rust) write to the process's stderr
past Python, so their messages would sit beside ctgen's one error line. ``captured_native_stderr``
points descriptor 2 at a temporary file for the duration of a block. Python code on other threads keeps
its stderr: ``sys.stderr`` is swapped for a stand-in that holds their writes until the block ends and
then passes them on in order, so a progress bar or a "skipped" line is delayed, never lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["captured_native_stderr"]

_lock = threading.RLock()  # one redirection at a time, process-wide
_libc: Any = None


class _HeldStream:
    """Stands in for ``sys.stderr`` during a capture: keeps Python's writes until ``release``."""

    def __init__(self, target: Any):
        self._target = target
        self._held: list[str] | None = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self._held is not None:
                self._held.append(text)
                return len(text)
        return self._target.write(text)

    def flush(self) -> None:
        with self._lock:
            if self._held is not None:
                return
        self._target.flush()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, None
        if held:
            with contextlib.suppress(Exception):
                self._target.write("".join(held))
                self._target.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self._target, name)


def _flush_c_stdio() -> None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None)
        except (OSError, TypeError):  # no C library handle (Windows)
            _libc = False
    if _libc:
        with contextlib.suppress(Exception):
            _libc.fflush(None)


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[Callable[[], str]]:
    """Capture file descriptor 2 for the block; yields a function returning what was written to it.

    Python's ``sys.stderr`` writes made meanwhile (on any thread) reach the real stderr when the block
    ends. Without a usable descriptor 2 the block runs uncaptured.
    """
    text: list[str] = []
    with _lock, tempfile.TemporaryFile() as sink:
        original = sys.stderr
        with contextlib.suppress(Exception):
            original.flush()
        try:
            saved = os.dup(2)
        except OSError:
            saved = None
        if saved is not None:
            try:
                os.dup2(sink.fileno(), 2)
            except OSError:
                os.close(saved)
                saved = None
        if saved is None:
            yield lambda: ""
            return
        held = _HeldStream(original)
        sys.stderr = held
        try:
            yield lambda: "".join(text)
        finally:
            _flush_c_stdio()
            os.dup2(saved, 2)
            os.close(saved)
            if sys.stderr is held:
                sys.stderr = original
            held.release()
            sink.seek(0)
            text.append(sink.read(1 << 16).decode("utf-8", "replace"))
