"""Usage errors as one line: what Typer's parser (click) raises, said the way ctgen says every error.

``ctgen: error: --num: no such option (did you mean --n?)``, exit 2, instead of Typer's usage box: the line
starts with the option, argument or command at fault, and suggestions come from difflib. Help is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from typer._click.exceptions import (
    BadOptionUsage,
    BadParameter,
    ClickException,
    MissingParameter,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)

from ctgen.cli.failures import fail
from ctgen.errors import suggestion

__all__ = ["UnknownCommand", "report"]


class UnknownCommand(UsageError):
    """A command name that the app does not have (the message is ctgen's line as is)."""

    def __init__(self, name: str, known: Iterable[str], ctx: Any = None):
        super().__init__(f"{name}: no such command{suggestion(name, known)}", ctx)


def report(error: ClickException) -> int:
    """Print a click exception raised while parsing as one line on stderr; returns its exit status (2 for usage
    errors). The bare ``ctgen`` has printed its help already and prints nothing more."""
    if not isinstance(error, NoArgsIsHelpError):
        fail(_line(error))
    return error.exit_code


def _line(error: ClickException) -> str:
    ctx = getattr(error, "ctx", None)
    if isinstance(error, NoSuchOption):
        return f"{error.option_name}: no such option{_unknown_option_hint(error.option_name, ctx)}"
    if isinstance(error, MissingParameter) and error.param is not None:
        kind = error.param_type or error.param.param_type_name
        return f"{_name(error.param)}: missing {kind}"
    if isinstance(error, BadParameter) and error.param is not None:
        return f"{_name(error.param)}: {_sentence(error.message)}"
    if isinstance(error, BadOptionUsage):  # "Option '--n' requires an argument.", "... does not take a value."
        message = "needs a value" if error.message.endswith("requires an argument.") else error.message
        message = re.sub(r"^Option \S+ ", "", message)
        return f"{error.option_name}: {_sentence(message)}"
    extra = re.fullmatch(r"Got unexpected extra argument\S* \((.*)\)\.?", error.format_message(), re.S)
    if extra and ctx is not None:
        return f"{extra.group(1)}: unexpected argument{'s' if ' ' in extra.group(1) else ''} to {ctx.command_path}"
    return _sentence(error.format_message())


def _unknown_option_hint(option: str, ctx: Any) -> str:
    """Where the user most likely went wrong with an unknown option: a near spelling, or a root option (such as
    --debug) given after the command."""
    if ctx is None:
        return ""
    parent = ctx.parent
    if parent is not None and option in _spellings(parent.command.params):
        return f" of ctgen {ctx.info_name} (give it before the command: ctgen {option} {ctx.info_name} …)"
    commands = getattr(ctx.command, "commands", {})
    owners = [name for name, command in commands.items() if option in _spellings(command.params)]
    if parent is None and owners:  # `ctgen --n 4 sample`
        return f" before the command ({option} is an option of {', '.join(owners)}: give it after the command)"
    return suggestion(option, [*_spellings(ctx.command.params), *ctx.help_option_names])


def _spellings(params: Iterable[Any]) -> list[str]:
    return [spelling for param in params if param.param_type_name == "option"
            for spelling in (*param.opts, *param.secondary_opts)]


def _name(param: Any) -> str:
    """An option by its long spelling (--n), an argument by its metavar (A.dcm)."""
    if param.param_type_name == "option" and param.opts:
        return next((spelling for spelling in param.opts if spelling.startswith("--")), param.opts[0])
    return param.metavar or param.name.upper()


def _sentence(message: str) -> str:
    message = " ".join(str(message).split())
    return message[:-1] if message.endswith(".") else message
