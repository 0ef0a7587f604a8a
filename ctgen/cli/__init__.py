"""The ``ctgen`` command line: the console-script entry point (``main``) and the Typer app (``app``).

Commands live in ``ctgen.cli.commands``, one module each: its options declared once as data (``OPTIONS``,
``ctgen.cli.options``) beside its body, which calls the pipeline (``ctgen.api``), writes and prints. The Typer app
and the fast path (``ctgen.cli.fast``, no Typer) both parse by that declaration. ``app`` is imported on first use.
"""

from __future__ import annotations

from typing import Any

from ctgen.cli.entry import main

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer app, imported on first use
        from ctgen.cli.typer_app import app

        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
