"""Plain option coercion, without pydantic: start-up time for shell loops.

Typer (0.2x) coerces every option value through a pydantic ``TypeAdapter``: importing pydantic and building
adapters costs about 0.15-0.2 s on every ``ctgen`` call, more than the command itself for one slice. ctgen's
options are all plain types (str, int, float, bool, Path, Literal choices and lists of str), so ``install``
gives the options that ctgen declares (``ctgen.cli.options.Option``) a small coercer here, driven by the
declaration (same checks: numbers, ranges, choices, Typer's own path checks), and leaves anything else to Typer.
Where Typer's internals differ from what this expects, nothing is changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctgen.cli.options import Option

__all__ = ["coerce_value", "declare", "install"]

_FLAG = Option("flag", kind="bool")


def coerce_value(kind: str, value: Any, *, choices: tuple[str, ...] = (), minimum: float | None = None,
                 maximum: float | None = None) -> Any:
    """An option's value from its command-line text (``kind``: ``Option.kind``; "path" gives the Path unchecked).
    Raises ValueError with the message for the user. Shared by Typer (through ``install``) and ctgen.cli.fast."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if kind == "list":
        return [str(item) for item in (value if isinstance(value, (list, tuple)) else [value])]
    if kind == "choice":
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, choices))}.")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "t", "yes", "y", "on"):
            return True
        if text in ("0", "false", "f", "no", "n", "off"):
            return False
        raise ValueError(f"{value!r} is not a valid boolean.")
    if kind in ("int", "float"):
        number_type = int if kind == "int" else float
        try:
            number = number_type(value) if not isinstance(value, number_type) else value
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{value!r} is not a valid {'integer' if kind == 'int' else 'number'}.") from None
        if kind == "float" and not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number.")
        if minimum is not None and number < minimum:
            raise ValueError(f"{number} is smaller than the minimum {minimum}.")
        if maximum is not None and number > maximum:
            raise ValueError(f"{number} is larger than the maximum {maximum}.")
        return number
    if kind == "path":
        return Path(value)
    return str(value)


def declare(info: Any, option: Any) -> Any:
    """Mark Typer's parameter info ``info`` as made from ``option`` (``ctgen.cli.options.Option``): ``install``
    coerces its values by the declaration. Returns ``info``."""
    info.ctgen_option = option
    return info


def install() -> bool:
    """Route the declared options (``declare``) through ``PlainParam``; returns whether Typer could be taught to."""
    try:
        from typer import _coercion, core
        from typer._click.exceptions import BadParameter
        from typer._param_types import coerce_cli_path
    except ImportError:
        return False
    original = getattr(core, "build_runtime_param", None)
    if original is None or getattr(original, "ctgen_plain", False) or not hasattr(_coercion, "RuntimeParam"):
        return original is not None

    @dataclass(frozen=True)
    class PlainParam(_coercion.RuntimeParam):
        option: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            option = self.option
            if option.kind == "path":
                return coerce_cli_path(Path(value), self.parameter_info, path_type=Path, param=param, ctx=ctx)
            try:
                return coerce_value(option.kind, value, choices=option.choices, minimum=option.minimum,
                                    maximum=option.maximum)
            except ValueError as error:
                raise BadParameter(str(error), ctx=ctx, param=param) from None

    def build_runtime_param(descriptor: Any) -> Any:
        option = getattr(descriptor.parameter_info, "ctgen_option", None)
        if option is None and descriptor.annotation is bool:
            option = _FLAG  # Typer coerces every flag through a bool parameter of its own
        if option is not None and descriptor.file_annotation is None:
            return PlainParam(annotation=descriptor.annotation, parameter_info=descriptor.parameter_info,
                              option=option)
        return original(descriptor)

    build_runtime_param.ctgen_plain = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
    return True
