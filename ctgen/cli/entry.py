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
    arguments = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("CTGEN_NO_FAST_PATH", "") in ("", "0"):
        from ctgen.cli import fast

        call = fast.parse(arguments)
        if call is not None:
            sys.exit(fast.run(call))
    from ctgen.cli.typer_app import run_typer

    run_typer(arguments)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
