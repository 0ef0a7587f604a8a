"""How a command's failure reaches the user, for the Typer app and the fast path alike (no Typer here).

Exit codes: 0 success, 1 a ctgen error (one line on stderr), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import errno
import os
import sys

from ctgen.errors import ArgumentError, CtgenError

__all__ = ["debug_requested", "exit_code", "fail"]

# Python argument names whose command-line option is not simply --name-with-dashes
_FLAGS = {"value_range": "--range", "file_format": "--format", "json_summary": "--json", "slice_path": "SLICE",
          "z": "--units", "spacing_mm": "the pixel spacing", "name": "NAME", "slice_index": "--slice"}


def debug_requested(flag: bool = False) -> bool:
    """--debug was given (``flag``) or CTGEN_DEBUG is set: failures keep their traceback."""
    return flag or os.environ.get("CTGEN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def fail(message: str) -> None:
    print(f"ctgen: error: {message}", file=sys.stderr, flush=True)


def _flag(argument: str) -> str:
    """The command-line spelling of a Python argument named in an ArgumentError."""
    return _FLAGS.get(argument, "--" + argument.replace("_", "-"))


def exit_code(error: BaseException, *, debug: bool) -> int | None:
    """Report ``error`` (raised by a command) as one line on stderr and return the exit status; None when it must
    propagate instead: --debug, a closed pipe (the caller exits quietly), or anything that is not an Exception."""
    if debug or not isinstance(error, (Exception, KeyboardInterrupt)):
        return None
    if isinstance(error, ArgumentError):  # a bad option value is a usage error, named by its flag
        fail(f"{_flag(error.argument)}: {error.reason}")
        return 2
    if isinstance(error, CtgenError):
        fail(str(error))
        return 1
    if isinstance(error, KeyboardInterrupt):
        print("ctgen: interrupted", file=sys.stderr, flush=True)
        return 130
    if isinstance(error, OSError):
        if error.errno == errno.EPIPE:
            return None
        where = f"{error.filename}: " if error.filename else ""
        fail(f"{where}{error.strerror or error}")
        return 1
    # the promise is: no traceback unless --debug
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    fail(f"internal error: {type(error).__name__}: {text} (run with --debug for the traceback)")
    return 1
