"""The ``ctgen`` console script (no Typer here: the fast path must not pay for it)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the command and exit with its status."""
    # numpy's matrix products here are small (resampling one slice); BLAS worker threads would only
    # compete with ONNX Runtime's for the cores and slow the reading pipeline several times over.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # SIGTERM (a batch system's kill, `timeout`) unwinds like Ctrl-C, so that no half-written output stays
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    _keep_freed_memory()
    arguments = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("CTGEN_NO_FAST_PATH", "") in ("", "0"):
        from ctgen.cli import fast

        call = fast.parse(arguments)
        if call is not None:
            sys.exit(fast.run(call))
    from ctgen.cli.typer_app import run_typer

    run_typer(arguments)


def _keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 16 MB for reuse instead of unmapping each one.

    Its default maps every block over 128 kB (a 512² slice is 1 MB of HU, plus its pixel bytes and the
    resampling's temporaries) and gives it back to the system when freed, so reading each slice page-faults
    fresh memory in: reading 512² DICOM slices took 1.8 ms each with the default and 0.9 ms with this. Set
    for the ctgen process only (a library must not change its host's allocator). Returns whether glibc took
    both settings (False elsewhere).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # blocks up to 16 MB come from the heap and are reused there; its top goes back once 64 MB lie free
    return mallopt(m_mmap_threshold, 16 << 20) == 1 and mallopt(m_trim_threshold, 64 << 20) == 1


def _interrupt(signum: int, frame: Any) -> None:
    from ctgen.io.atomic import note_interrupt

    note_interrupt()  # a KeyboardInterrupt lost in C code is raised again at the next file written
    raise KeyboardInterrupt
