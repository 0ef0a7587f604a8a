"""The ``ctgen`` command line: the Typer app (``app``) and the console-script entry point (``main``).

Commands live in ``ctgen.cli.commands``, one module each; they parse options, call the pipeline
(``ctgen.api``), write and print.
"""

from __future__ import annotations

from ctgen.cli.app import app, main

__all__ = ["app", "main"]
