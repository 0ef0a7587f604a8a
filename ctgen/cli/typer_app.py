"""The ``ctgen`` command line as a Typer app.

Only Typer (and Rich, for help) is imported here: ``ctgen --version`` and ``ctgen --help`` must answer
at once. Every command lives in ``ctgen/cli/commands/``: the app makes Typer parameters of its declared
``OPTIONS`` (``ctgen.cli.options``) and calls its body, which imports numpy, ONNX Runtime and pydicom.
Exit codes: 0 success, 1 a ctgen error (one line on stderr), 2 a usage error, 130 interrupted
(``ctgen.cli.failures``). The console script is ``ctgen.cli.entry.main``: it runs the per-file commands on
the fast path (``ctgen.cli.fast``) when it can and this app otherwise.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from typer.core import TyperGroup

from ctgen import __version__
from ctgen.cli.coerce import declare
from ctgen.cli.coerce import install as _plain_coercion
from ctgen.cli.failures import debug_requested, exit_code
from ctgen.cli.options import ROOT, ROOT_SHARED, Option

__all__ = ["app", "run_typer"]

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


_HELP_OPTIONS = ["-h", "--help"]
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
    context_settings={"help_option_names": _HELP_OPTIONS},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"ctgen {__version__}")
        raise typer.Exit()


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "path": Path, "list": list[str]}


def _annotation(option: Option) -> Any:
    """The Typer parameter of a declared option: ``Annotated[type, typer.Option(...)]``."""
    kind = Literal[option.choices] if option.kind == "choice" else _TYPES[option.kind]  # type: ignore[valid-type]
    given = {"help": option.help, "metavar": option.metavar, "envvar": option.envvar, "min": option.minimum,
             "max": option.maximum, "show_default": option.show_default, "rich_help_panel": option.panel}
    settings = {key: value for key, value in given.items() if value is not None}
    if option.kind == "path":
        settings.update(file_okay=option.file_okay, dir_okay=option.dir_okay)
    made = declare(typer.Option(*option.flags, **settings) if option.flags else typer.Argument(**settings), option)
    return Annotated[Optional[kind] if option.optional else kind, made]  # noqa: UP007 - a type made at run time


def _signed(function: Any, options: tuple[Option, ...], *first: inspect.Parameter) -> Any:
    """``function(**arguments)`` with the signature Typer reads: one keyword parameter per declared option."""
    keyword, empty = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty
    parameters = [*first, *(inspect.Parameter(option.name, keyword, annotation=_annotation(option),
                                              default=empty if option.required else option.default)
                            for option in options)]
    function.__signature__ = inspect.Signature(parameters)
    function.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return function


def _root(ctx: typer.Context, **given: Any) -> None:
    ctx.meta[_DEBUG_KEY] = given["debug"]
    if given["max_pixels"] is not None:
        from ctgen.io.dicom import set_max_pixels

        set_max_pixels(given["max_pixels"])
    shared = {name: given[name] for name in ROOT_SHARED if given[name] is not None and given[name] is not False}
    if shared:  # defaults for the command's own options (which still win when given after the command)
        ctx.default_map = {name: shared for name in ctx.command.commands}  # type: ignore[attr-defined]


_VERSION = Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_show_version,
                                        help="Print the version and exit.")]
_signed(_root, ROOT, inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter("version", inspect.Parameter.KEYWORD_ONLY, annotation=_VERSION, default=False))


def _help_text(function: Any) -> str:
    # Rich keeps the docstring's line breaks: join each paragraph into one line and let it wrap.
    paragraphs = inspect.cleandoc(function.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


_PANELS = {  # help panel -> its commands, each ctgen.cli.commands.NAME, in --help order
    "Generate images": ("sample", "interpolate", "traverse", "reconstruct", "edit", "explore"),
    "Latent vectors": ("encode", "decode"),
    "Archives": ("scan",),
    "Model": ("info", "units", "evaluate", "example"),
}
_COMMANDS = {name: panel for panel, names in _PANELS.items() for name in names}
# root options that take a value (their value is never the command's name)
_ROOT_VALUE_OPTIONS = frozenset(flag for option in ROOT if option.kind != "bool" for flag in option.flags)


def _make_app(names: Any = _COMMANDS) -> typer.Typer:
    """The Typer app with the named commands (all of them by default)."""
    made = typer.Typer(**_APP_SETTINGS)
    made.callback()(_root)
    for name in names:
        module = importlib.import_module(f"ctgen.cli.commands.{name}")

        def function(_module: Any = module, _name: str = name, **arguments: Any) -> None:
            getattr(_module, _name)(**arguments)  # looked up when it runs (tests replace it)

        body = getattr(module, name)
        made.command(name, help=_help_text(body), rich_help_panel=_COMMANDS[name])(_signed(function, module.OPTIONS))
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
        elif token in _HELP_OPTIONS:
            return None  # the root's help, before the command: it lists every command
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
