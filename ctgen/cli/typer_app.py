"""The ``ctgen`` command line as a Typer app.

Only Typer (and Rich, for help) is imported here: ``ctgen --version`` and ``ctgen --help`` must answer
at once. Every command lives in ``ctgen/cli/commands/`` and imports numpy, ONNX Runtime and pydicom inside
its body. Exit codes: 0 success, 1 a ctgen error (one line on stderr), 2 a usage error, 130 interrupted
(``ctgen.cli.failures``). The console script is ``ctgen.cli.entry.main``: it runs the per-file commands on
the fast path (``ctgen.cli.fast``) when it can and this app otherwise.
"""

from __future__ import annotations

import inspect
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ctgen import __version__
from ctgen.cli.commands import (
    decode,
    edit,
    encode,
    evaluate,
    example,
    explore,
    info,
    interpolate,
    reconstruct,
    sample,
    scan,
    traverse,
)
from ctgen.cli.coerce import install as _plain_coercion
from ctgen.cli.options import BOUNDS, Device
from ctgen.cli.failures import debug_requested, exit_code

__all__ = ["SHARED_OPTIONS", "app", "run_typer"]

_plain_coercion()  # options are coerced without importing pydantic (start-up time, see ctgen.cli.coerce)

_DEBUG_KEY = "ctgen.debug"


class _Group(TyperGroup):
    """Turns errors into one line on stderr and an exit code, for ``main`` and the test runner alike."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except BaseException as error:  # noqa: BLE001 - reported by exit_code, or raised again
            code = exit_code(error, debug=debug_requested(bool(ctx.meta.get(_DEBUG_KEY))))
            if code is None:
                raise  # --debug, SystemExit, or a closed pipe (Typer exits quietly)
            raise typer.Exit(code) from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's ``main``, but a usage error is one line on stderr (``ctgen.cli.usage``), not Typer's box."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from typer._click.exceptions import ClickException

        from ctgen.cli import usage

        try:
            returned = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as error:
            sys.exit(usage.report(error))
        except typer.Abort:
            print("ctgen: aborted", file=sys.stderr, flush=True)
            sys.exit(1)
        sys.exit(returned if isinstance(returned, int) else 0)

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None and not ctx.resilient_parsing:
            from ctgen.cli.usage import UnknownCommand

            raise UnknownCommand(name, self.list_commands(ctx), ctx)
        return super().resolve_command(ctx, args)


_APP_SETTINGS: dict[str, Any] = dict(
    cls=_Group,
    name="ctgen",
    help=(
        "Generate and explore brain CT slices with a disentangled β-VAE on ONNX Runtime.\n\n"
        "Data (JSON lines, --json summaries) goes to stdout; progress, tables and errors to stderr. "
        "Exit codes: 0 ok, 1 error, 2 usage error, 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"ctgen {__version__}")
        raise typer.Exit()


# root options that become the defaults of the command's options of the same name (ctgen.cli.fast reads this)
SHARED_OPTIONS = ("model", "device", "quiet", "json_summary", "force", "window", "seed")
_SHARED = "Common options (before the command: apply to every command that has them)"


def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", is_eager=True, callback=_show_version, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks on errors (or set CTGEN_DEBUG=1).")
    ] = False,
    model: Annotated[
        str | None, typer.Option("--model", "-m", metavar="NAME|PATH", help="Model name or folder.",
                                 rich_help_panel=_SHARED, show_default=False)
    ] = None,
    device: Annotated[
        Device | None, typer.Option("--device", help="Where to run.", rich_help_panel=_SHARED, show_default=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes.", rich_help_panel=_SHARED)] = False,
    json_summary: Annotated[
        bool, typer.Option("--json", help="JSON summary on stdout.", rich_help_panel=_SHARED)
    ] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite outputs.", rich_help_panel=_SHARED)] = False,
    window: Annotated[
        str | None, typer.Option("--window", "-w", metavar="brain|subdural|bone|C,W", help="Display window.",
                                 rich_help_panel=_SHARED, show_default=False)
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", **BOUNDS["seed"], help="Random seed.", rich_help_panel=_SHARED,
                                 show_default=False)
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option("--max-pixels", **BOUNDS["max_pixels"], metavar="N", envvar="CTGEN_MAX_PIXELS",
                     show_default="2^26",
                     help="Refuse DICOM files and NIfTI volumes whose rows x columns x frames (slices) exceed N, "
                          "before decoding them.",
                     rich_help_panel=_SHARED),
    ] = None,
) -> None:
    ctx.meta[_DEBUG_KEY] = debug
    if max_pixels is not None:
        from ctgen.dicom import set_max_pixels

        set_max_pixels(max_pixels)
    given = {"model": model, "device": device, "quiet": quiet, "json_summary": json_summary, "force": force,
             "window": window, "seed": seed}
    shared = {name: given[name] for name in SHARED_OPTIONS if given[name] is not None and given[name] is not False}
    if shared:  # defaults for the command's own options (which still win when given after the command)
        ctx.default_map = {name: shared for name in ctx.command.commands}  # type: ignore[attr-defined]


def _help_text(function: Any) -> str:
    # Rich keeps the docstring's line breaks: join each paragraph into one line and let it wrap.
    paragraphs = inspect.cleandoc(function.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


_COMMANDS: dict[str, tuple[Any, str]] = {  # command name -> (function, help panel), in --help order
    "sample": (sample.sample, "Generate images"),
    "interpolate": (interpolate.interpolate, "Generate images"),
    "traverse": (traverse.traverse, "Generate images"),
    "reconstruct": (reconstruct.reconstruct, "Generate images"),
    "edit": (edit.edit, "Generate images"),
    "explore": (explore.explore, "Generate images"),
    "encode": (encode.encode, "Latent vectors"),
    "scan": (scan.scan, "Archives"),
    "decode": (decode.decode, "Latent vectors"),
    "info": (info.info, "Model"),
    "units": (info.units, "Model"),
    "evaluate": (evaluate.evaluate, "Model"),
    "example": (example.example, "Model"),
}
# root options that take a value (their value is never the command's name)
_ROOT_VALUE_OPTIONS = frozenset({"--model", "-m", "--device", "--window", "-w", "--seed", "--max-pixels"})


def _make_app(names: Any = _COMMANDS) -> typer.Typer:
    """The Typer app with the named commands (all of them by default)."""
    made = typer.Typer(**_APP_SETTINGS)
    made.callback()(_root)
    for name in names:
        function, panel = _COMMANDS[name]
        made.command(name, help=_help_text(function), rich_help_panel=panel)(function)
    return made


app = _make_app()


def _invoked_command(argv: list[str]) -> str | None:
    """The command an argument list names, when it names one after root options only."""
    expect_value = False
    for token in argv:
        if expect_value:
            expect_value = False
        elif token in _COMMANDS:
            return token
        elif token in _ROOT_VALUE_OPTIONS:
            expect_value = True
        elif not token.startswith("-") or token == "--":
            return None  # an unknown command: the full app says so and lists them
    return None


def run_typer(arguments: list[str]) -> None:
    """Run the Typer app on an argument list (without the program name) and exit with its status."""
    # Typer introspects every command's signature when it builds the parser (about 40 ms for twelve): build
    # only the command that runs; --help, a bare `ctgen` and unknown commands get the full app
    command = _invoked_command(arguments)
    chosen = app if command is None else _make_app([command])
    typer.main.get_command(chosen).main(args=arguments, prog_name="ctgen")
