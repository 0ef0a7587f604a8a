"""Exception types of ctgen. Library code raises these; only the CLI prints and exits."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike

__all__ = ["CtgenError", "DicomError", "ModelError", "InputError", "ArgumentError", "OutputError", "suggestion"]


def suggestion(name: str, known: Iterable[str]) -> str:
    """" (did you mean X?)" for the closest of ``known`` to a mistyped ``name``, or "": the end of an error line."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class CtgenError(Exception):
    """Base class: the message is one line meant for the user."""


class _PathError(CtgenError):
    def __init__(self, path: str | PathLike | None, reason: str):
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def __reduce__(self):  # picklable, so errors cross multiprocessing boundaries intact
        return type(self), (self.path, self.reason)


class DicomError(_PathError):
    """A file could not be read as a usable CT slice, or a DICOM file could not be written."""


class ModelError(_PathError):
    """A model folder is missing, incomplete, corrupt, or cannot run on the requested device."""


class InputError(_PathError):
    """Bad user input other than DICOM: latent files, unit lists, shard specs, options."""


class ArgumentError(InputError):
    """A bad value for a function argument (in Python) or a command-line option (on the CLI, which names the
    option and exits 2, as for any usage error). ``argument`` is the Python parameter name, e.g. "units"."""

    def __init__(self, argument: str, reason: str):
        self.argument = argument
        super().__init__(None, reason)
        self.args = (f"argument {argument!r}: {reason}",)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.argument, self.reason)


class OutputError(_PathError):
    """An output cannot be written (exists without --force, unwritable folder)."""
