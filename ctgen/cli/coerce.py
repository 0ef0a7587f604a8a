"""Plain option coercion, without pydantic: start-up time for shell loops.

Typer (0.2x) coerces every option value through a pydantic ``TypeAdapter``: importing pydantic and building
adapters costs about 0.15-0.2 s on every ``ctgen`` call, more than the command itself for one slice. ctgen's
options are all plain types (str, int, float, bool, Path, Literal choices and lists of str), so ``install``
gives those a small coercer here (same checks: numbers, ranges, choices, Typer's own path checks) and leaves
anything else to Typer. Where Typer's internals differ from what this expects, nothing is changed.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["coerce_value", "install", "kind_of"]

_PLAIN = (str, int, float, bool, Path)


def _unwrap(annotation: Any) -> Any:
    """X | None and Optional[X] -> X; anything else unchanged."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    origin = typing.get_origin(annotation)
    if (origin is typing.Union or type(annotation).__name__ == "UnionType") and len(args) == 1:
        return args[0]
    return annotation


def _is_plain(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(value, str) for value in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation) == (str,)
    return annotation in _PLAIN


def kind_of(annotation: Any) -> str:
    """The coercion of a plain annotation: "choice", "list", "bool", "int", "float", "path" or "str"."""
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    if typing.get_origin(annotation) is list:
        return "list"
    return {bool: "bool", int: "int", float: "float", Path: "path"}.get(annotation, "str")


def coerce_value(kind: str, value: Any, *, choices: tuple[str, ...] = (), minimum: float | None = None,
                 maximum: float | None = None) -> Any:
    """An option's value from its command-line text (``kind`` from ``kind_of``; "path" gives the Path unchecked).
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


def install() -> bool:
    """Route plain-typed options through ``PlainParam``; returns whether Typer could be taught to."""
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
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            return _coerce(_unwrap(self.annotation), value, self.parameter_info, param, ctx)

    def _coerce(annotation: Any, value: Any, info: Any, param: Any, ctx: Any) -> Any:
        if annotation is Path:
            return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        try:
            return coerce_value(kind_of(annotation), value, choices=typing.get_args(annotation),
                                minimum=info.min, maximum=info.max)
        except ValueError as error:
            raise BadParameter(str(error), ctx=ctx, param=param) from None

    def build_runtime_param(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        if (descriptor.file_annotation is None and getattr(info, "parser", None) is None
                and _is_plain(descriptor.annotation)):
            return PlainParam(annotation=descriptor.annotation, parameter_info=info)
        return original(descriptor)

    build_runtime_param.ctgen_plain = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
    return True
