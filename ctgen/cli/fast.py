"""The fast path: the per-file commands parsed without Typer, for shell loops that start ctgen thousands of times.

Importing Typer and building a command from its signature costs about 50 ms per call, a third of what
`ctgen sample --n 1` or `ctgen encode one.dcm` cost above the imports no ctgen can avoid (numpy, ONNX Runtime,
pydicom). For the commands in ``FAST_COMMANDS``, ``parse`` reads the argument list with the option table that
``build_spec`` derives from the Typer app (kept in ``fast_spec.py``; a test checks that it is current) and
``run`` calls the command's action (``ctgen.cli.actions``) with every option, the way Typer would.

``parse`` takes only what it is sure of: long and short options as written in the table, ``--name=value``,
flags, positional arguments, ``--``, the common options before the command, environment variables; a value
that fails its check is not rejected here. Anything else (--help, --version, an unknown or abbreviated option,
a bad value, a missing argument) returns None, and the Typer app parses the same list and says what is wrong,
so that users see one behaviour. Tests compare what both give for the same argument lists.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctgen.cli.coerce import coerce_value

__all__ = ["FAST_COMMANDS", "Call", "build_spec", "parse", "run", "spec_source"]

FAST_COMMANDS = ("sample", "decode", "encode", "reconstruct", "traverse", "interpolate", "edit")
SPEC_MODULE = Path(__file__).with_name("fast_spec.py")


@dataclass
class Call:
    """A parsed command line: the command, its action's keyword arguments and the root's own options."""

    command: str
    arguments: dict[str, Any]
    debug: bool = False
    max_pixels: int | None = None
    root: dict[str, Any] = field(default_factory=dict)


class _Defer(Exception):
    """Leave this argument list to Typer."""


def parse(argv: list[str], spec: dict[str, Any] | None = None) -> Call | None:
    """The call that ``argv`` (without the program name) makes, or None when Typer must parse it."""
    if spec is None:
        from ctgen.cli.fast_spec import SPEC as spec
    try:
        return _parse(list(argv), spec)
    except _Defer:
        return None


def _parse(argv: list[str], spec: dict[str, Any]) -> Call:
    root_params = spec["root"]
    root_table = _option_table(root_params)
    root_values: dict[str, Any] = {}
    index = 0
    while index < len(argv) and argv[index] not in spec["commands"]:
        index = _take_option(argv, index, root_table, root_values)
    if index == len(argv):
        raise _Defer  # no command (or one Typer must name as unknown)
    command = argv[index]
    params = spec["commands"][command]
    root = {name: _value(root_params[name], root_values, {}) for name in root_params}
    # the root's common options are defaults for the command's own (click: command line > envvar > these)
    shared = {name: root[name] for name in spec["shared"] if root[name] is not None and root[name] is not False}

    table = _option_table(params)
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
    _assign_positional(params, positional, given)
    arguments = {name: _value(param, given, shared) for name, param in params.items()}
    return Call(command, arguments, debug=bool(root.get("debug")), max_pixels=root.get("max_pixels"), root=root)


def _option_table(params: dict[str, Any]) -> dict[str, tuple[str, bool | None]]:
    """Option spelling -> (parameter name, flag value or None for an option that takes a value)."""
    table: dict[str, tuple[str, bool | None]] = {}
    for name, param in params.items():
        if param["kind"] != "option":
            continue
        for spelling in param["opts"]:
            table[spelling] = (name, True if param["flag"] else None)
        for spelling in param["secondary_opts"]:
            table[spelling] = (name, False)
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
    if isinstance(given.get(name), list):
        given[name].append(value)
    else:
        given[name] = [value]
    return index


def _assign_positional(params: dict[str, Any], tokens: list[str], given: dict[str, Any]) -> None:
    arguments = [(name, param) for name, param in params.items() if param["kind"] == "argument"]
    fixed_after = [sum(param["nargs"] for _, param in arguments[position + 1:] if param["nargs"] > 0)
                   for position in range(len(arguments))]
    for position, (name, param) in enumerate(arguments):
        if param["nargs"] < 0:
            count = max(0, len(tokens) - fixed_after[position])
        else:
            count = min(param["nargs"], len(tokens))
        taken, tokens = tokens[:count], tokens[count:]
        if taken:
            given[name] = taken
    if tokens:
        raise _Defer  # more arguments than the command takes


def _value(param: dict[str, Any], given: dict[str, Any], shared: dict[str, Any]) -> Any:
    """A parameter's value by click's order: the command line, its environment variable, the root's common
    option, its default. Raises _Defer where Typer would report a problem."""
    name = param["name"]
    if name in given:
        raw = given[name]
    elif param["envvar"] and os.environ.get(param["envvar"]):
        if param["type"] == "list":
            raise _Defer  # an environment variable split into several values: Typer's rules
        raw = [os.environ[param["envvar"]]]
    elif name in shared:
        return shared[name]
    elif param["required"]:
        raise _Defer
    else:
        return param["default"]
    if isinstance(raw, bool):
        return raw
    if param["type"] == "list":  # list[str]: an argument that takes several, or an option given several times
        return [str(item) for item in raw]
    return _coerce(param, raw[-1])  # an option given twice: the last one counts


def _coerce(param: dict[str, Any], text: str) -> Any:
    try:
        value = coerce_value(param["type"], text, choices=tuple(param["choices"]), minimum=param["min"],
                             maximum=param["max"])
    except ValueError:
        raise _Defer from None
    if param["type"] == "path":
        value = _checked_path(value, param["path"])
    return value


def _checked_path(path: Path, checks: dict[str, bool]) -> Path:
    """Typer's checks of a Path option; any failure is Typer's to report."""
    if checks["allow_dash"] and checks["file_okay"] and os.fspath(path) == "-":
        return path
    if checks["resolve_path"]:
        path = Path(os.path.realpath(path))
    try:
        mode = os.stat(path).st_mode
    except OSError:
        if checks["exists"]:
            raise _Defer from None
        return path
    if (not checks["file_okay"] and stat.S_ISREG(mode)) or (not checks["dir_okay"] and stat.S_ISDIR(mode)) \
            or (checks["readable"] and not os.access(path, os.R_OK)) \
            or (checks["writable"] and not os.access(path, os.W_OK)):
        raise _Defer
    return path


def run(call: Call) -> int:
    """Run a parsed call as the Typer app would: the action, then failures as one line and an exit status."""
    import importlib

    from ctgen.cli.failures import debug_requested, exit_code

    debug = debug_requested(call.debug)
    try:
        if call.max_pixels is not None:
            from ctgen.dicom import set_max_pixels

            set_max_pixels(call.max_pixels)
        action = getattr(importlib.import_module(f"ctgen.cli.actions.{call.command}"), call.command)
        action(**call.arguments)
    except BaseException as error:  # noqa: BLE001 - reported by exit_code, or raised again
        code = exit_code(error, debug=debug)
        if code is not None:
            return code
        if isinstance(error, OSError) and error.errno == errno.EPIPE and not debug:
            _quiet_stdout()  # the reader went away (`ctgen encode ... | head`): exit quietly, as Typer does
            return 1
        raise
    return 0


def _quiet_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------- the table, from the Typer app
def build_spec() -> dict[str, Any]:
    """The option table of the root and of every fast command, read off the Typer app (imports Typer)."""
    import typing

    import typer

    from ctgen.cli import typer_app as app_module
    from ctgen.cli.coerce import _unwrap, kind_of

    group = typer.main.get_command(app_module._make_app(FAST_COMMANDS))

    def describe(param: Any, hints: dict[str, Any]) -> dict[str, Any]:
        hint = hints[param.name]
        annotation, info = typing.get_args(hint)[0], typing.get_args(hint)[1]
        kind = kind_of(annotation)
        if param.callback is not None or getattr(param, "count", False) or (kind != "list" and param.multiple):
            raise ValueError(f"{param.name}: an option the fast path does not read")
        choices = list(typing.get_args(_unwrap(annotation))) if kind == "choice" else []
        default = param.default
        if default is not None and not isinstance(default, (bool, int, float, str)):
            raise ValueError(f"{param.name}: a default the table cannot hold ({default!r})")
        return {
            "name": param.name,
            "kind": param.param_type_name,
            "opts": list(param.opts) if param.param_type_name == "option" else [],
            "secondary_opts": list(getattr(param, "secondary_opts", [])),
            "flag": bool(getattr(param, "is_flag", False)),
            "multiple": bool(param.multiple),
            "nargs": param.nargs,
            "required": bool(param.required),
            "default": default,
            "envvar": param.envvar if isinstance(param.envvar, str) else None,
            "type": kind,
            "choices": choices,
            "min": info.min if hasattr(info, "min") else None,
            "max": info.max if hasattr(info, "max") else None,
            "path": {check: bool(getattr(info, check)) for check in
                     ("exists", "file_okay", "dir_okay", "readable", "writable", "resolve_path", "allow_dash")}
            if kind == "path" else None,
        }

    root_hints = typing.get_type_hints(app_module._root, include_extras=True)
    root = {param.name: describe(param, root_hints) for param in group.params if param.name != "version"}
    commands = {}
    for name in FAST_COMMANDS:
        function = app_module._COMMANDS[name][0]
        hints = typing.get_type_hints(function, include_extras=True)
        commands[name] = {param.name: describe(param, hints) for param in group.commands[name].params}
    return {"root": root, "shared": list(app_module.SHARED_OPTIONS), "commands": commands}


def spec_source(spec: dict[str, Any]) -> str:
    """``fast_spec.py``'s text for ``spec``: one line per parameter."""
    lines = ['"""The fast path\'s option table (ctgen.cli.fast), read off the Typer app. Generated: after changing an',
             'option of a fast command, run  python -m ctgen.cli.fast --write  (a test fails until then)."""',
             "# ruff: noqa: E501", "", "SPEC = {",
             '    "root": {']
    lines += [f"        {name!r}: {param!r}," for name, param in spec["root"].items()]
    lines += ["    },", f'    "shared": {spec["shared"]!r},', '    "commands": {']
    for command, params in spec["commands"].items():
        lines.append(f"        {command!r}: {{")
        lines += [f"            {name!r}: {param!r}," for name, param in params.items()]
        lines.append("        },")
    lines += ["    },", "}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    text = spec_source(build_spec())
    if sys.argv[1:] == ["--write"]:
        SPEC_MODULE.write_text(text)
        print(f"wrote {SPEC_MODULE}")
    else:
        sys.stdout.write(text)
