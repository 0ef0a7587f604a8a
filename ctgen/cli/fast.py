"""The fast path: the per-file commands parsed without Typer, for shell loops that start ctgen thousands of times.

Importing Typer and building a command from its signature costs about 50 ms per call, a third of what
`ctgen sample --n 1` or `ctgen encode one.dcm` cost above the imports no ctgen can avoid (numpy, ONNX Runtime,
pydicom). For the commands in ``FAST_COMMANDS``, ``parse`` reads the argument list with the options that the
command's module declares (``OPTIONS``, the same declaration the Typer app is built from) and ``run`` calls the
command with every option, the way Typer would.

``parse`` takes only what it is sure of: long and short options as written in the table, ``--name=value``,
flags, positional arguments, ``--``, the common options before the command, environment variables; a value
that fails its check is not rejected here. Anything else (--help, --version, an unknown or abbreviated option,
a bad value, a missing argument) returns None, and the Typer app parses the same list and says what is wrong,
so that users see one behaviour. Tests compare what both give for the same argument lists.
"""

from __future__ import annotations

import errno
import importlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctgen.cli.coerce import coerce_value
from ctgen.cli.options import ROOT, ROOT_SHARED, Option

__all__ = ["FAST_COMMANDS", "Call", "options_of", "parse", "run"]

FAST_COMMANDS = ("sample", "decode", "encode", "reconstruct", "traverse", "interpolate", "edit")


@dataclass
class Call:
    """A parsed command line: the command, its keyword arguments and the root's --debug and --max-pixels."""

    command: str
    arguments: dict[str, Any]
    debug: bool = False
    max_pixels: int | None = None


class _Defer(Exception):
    """Leave this argument list to Typer."""


def options_of(command: str) -> tuple[Option, ...]:
    """The options that a command's module declares (importing it costs no Typer)."""
    return importlib.import_module(f"ctgen.cli.commands.{command}").OPTIONS


def parse(argv: list[str]) -> Call | None:
    """The call that ``argv`` (without the program name) makes, or None when Typer must parse it."""
    try:
        return _parse(list(argv))
    except _Defer:
        return None


def _parse(argv: list[str]) -> Call:
    root_values: dict[str, Any] = {}
    index = 0
    while index < len(argv) and argv[index] not in FAST_COMMANDS:
        index = _take_option(argv, index, _option_table(ROOT), root_values)
    if index == len(argv):
        raise _Defer  # no command (or one Typer must name as unknown)
    command = argv[index]
    options = options_of(command)
    root = {option.name: _value(option, root_values, {}) for option in ROOT}
    # the root's common options are defaults for the command's own (click: command line > envvar > these)
    shared = {name: root[name] for name in ROOT_SHARED if root[name] is not None and root[name] is not False}

    table = _option_table(options)
    given: dict[str, Any] = {}
    positional: list[str] = []
    index += 1
    while index < len(argv):
        token = argv[index]
        if token == "--":
            positional.extend(argv[index + 1:])
            break
        if token.startswith("-") and token != "-":
            index = _take_option(argv, index, table, given)
        else:
            positional.append(token)
            index += 1
    _assign_positional(options, positional, given)
    arguments = {option.name: _value(option, given, shared) for option in options}
    return Call(command, arguments, debug=bool(root["debug"]), max_pixels=root["max_pixels"])


def _option_table(options: tuple[Option, ...]) -> dict[str, tuple[str, bool | None]]:
    """Option spelling -> (parameter name, flag value or None for an option that takes a value)."""
    table: dict[str, tuple[str, bool | None]] = {}
    for option in options:
        for spelling in option.flags:
            on, _, off = spelling.partition("/")  # --real/--no-real
            table[on] = (option.name, True if option.kind == "bool" else None)
            if off:
                table[off] = (option.name, False)
    return table


def _take_option(argv: list[str], index: int, table: dict[str, tuple[str, bool | None]], given: dict[str, Any]) -> int:
    token = argv[index]
    spelling, equals, attached = token.partition("=")
    if not token.startswith("-") or spelling not in table or (equals and not spelling.startswith("--")):
        raise _Defer
    name, flag = table[spelling]
    if flag is not None:
        if equals:
            raise _Defer
        given[name] = flag
        return index + 1
    if equals:
        value, index = attached, index + 1
    elif index + 1 < len(argv) and not (argv[index + 1].startswith("-") and argv[index + 1] != "-"):
        value, index = argv[index + 1], index + 2
    else:
        raise _Defer  # a missing value, or one that looks like an option: Typer decides
    given.setdefault(name, []).append(value)
    return index


def _assign_positional(options: tuple[Option, ...], tokens: list[str], given: dict[str, Any]) -> None:
    arguments = [option for option in options if not option.flags]
    for position, option in enumerate(arguments):
        if option.kind == "list":  # takes what the arguments after it leave
            count = max(0, len(tokens) - sum(later.kind != "list" for later in arguments[position + 1:]))
        else:
            count = min(1, len(tokens))
        taken, tokens = tokens[:count], tokens[count:]
        if taken:
            given[option.name] = taken
    if tokens:
        raise _Defer  # more arguments than the command takes


def _value(option: Option, given: dict[str, Any], shared: dict[str, Any]) -> Any:
    """A parameter's value by click's order: the command line, its environment variable, the root's common
    option, its default. Raises _Defer where Typer would report a problem."""
    name = option.name
    if name in given:
        raw = given[name]
    elif option.envvar and os.environ.get(option.envvar):
        if option.kind == "list":
            raise _Defer  # an environment variable split into several values: Typer's rules
        raw = [os.environ[option.envvar]]
    elif name in shared:
        return shared[name]
    elif option.required:
        raise _Defer
    else:
        return option.default
    if isinstance(raw, bool):
        return raw
    if option.kind == "list":  # an argument that takes several, or an option given several times
        return [str(item) for item in raw]
    try:  # an option given twice: the last one counts
        value = coerce_value(option.kind, raw[-1], choices=option.choices, minimum=option.minimum,
                             maximum=option.maximum)
    except ValueError:
        raise _Defer from None
    return _checked_path(value, option) if option.kind == "path" else value


def _checked_path(path: Path, option: Option) -> Path:
    """Typer's checks of a Path option (readable when it exists; a file or a folder as declared); any failure is
    Typer's to report."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return path
    if (not option.file_okay and stat.S_ISREG(mode)) or (not option.dir_okay and stat.S_ISDIR(mode)) \
            or not os.access(path, os.R_OK):
        raise _Defer
    return path


def run(call: Call) -> int:
    """Run a parsed call as the Typer app would: the command, then failures as one line and an exit status."""
    from ctgen.cli.failures import debug_requested, exit_code

    debug = debug_requested(call.debug)
    try:
        if call.max_pixels is not None:
            from ctgen.io.dicom import set_max_pixels

            set_max_pixels(call.max_pixels)
        getattr(importlib.import_module(f"ctgen.cli.commands.{call.command}"), call.command)(**call.arguments)
    except BaseException as error:  # noqa: BLE001 - reported by exit_code, or raised again
        code = exit_code(error, debug=debug)
        if code is not None:
            return code
        if isinstance(error, OSError) and error.errno == errno.EPIPE and not debug:
            from ctgen.cli.run import drop_stdout

            drop_stdout()  # the reader went away (`ctgen encode ... | head`): exit quietly, as Typer does
            return 1
        raise
    return 0

