"""The fast path (ctgen.cli.fast) against the Typer app: same argument list, same call, or it leaves the list to
Typer. Parsing only: the commands are replaced by recorders, so nothing runs a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctgen.cli import typer_app as app_module
from ctgen.cli import fast
from ctgen.cli.options import ROOT

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Recorded(BaseException):  # passes through the app's error handling
    pass


def typer_call(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any], int | None] | None:
    """(command, keyword arguments, --max-pixels) as the Typer app would call the command; None if it refuses."""
    import importlib

    import ctgen.io.dicom

    seen: dict[str, Any] = {"max_pixels": None}
    monkeypatch.setattr(ctgen.io.dicom, "set_max_pixels", lambda value: seen.__setitem__("max_pixels", value))
    for name in fast.FAST_COMMANDS:
        def record(_name=name, **arguments):
            seen["call"] = (_name, arguments)
            raise _Recorded

        monkeypatch.setattr(importlib.import_module(f"ctgen.cli.commands.{name}"), name, record)
    command = app_module._invoked_command(argv)
    chosen = app_module.app if command is None else app_module._make_app([command])
    try:
        typer.main.get_command(chosen).main(args=argv, prog_name="ctgen", standalone_mode=False)
    except _Recorded:
        return seen["call"][0], seen["call"][1], seen["max_pixels"]
    except (Exception, SystemExit):  # noqa: BLE001 - a usage error, --help, ...
        return None
    return None


def assert_same(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> fast.Call | None:
    call = fast.parse(argv)
    if call is None:
        return None
    expected = typer_call(argv, monkeypatch)
    assert expected is not None, f"the fast path took {argv} and Typer refuses it"
    command, arguments, max_pixels = expected
    assert call.command == command
    assert {k: (type(v), v) for k, v in call.arguments.items()} == {k: (type(v), v) for k, v in arguments.items()}, argv
    assert call.max_pixels == max_pixels
    return call


def _kind(annotation: Any) -> tuple[str, list[str]]:
    """The kind (``Option.kind``) and choices of the type Typer was given: X | None and Optional[X] read as X."""
    import typing

    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Union or type(annotation).__name__ == "UnionType":
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return "choice", list(typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return "list", []
    return {bool: "bool", int: "int", float: "float", Path: "path", str: "str"}[annotation], []


def _table(params: Any, function: Any) -> dict[str, Any]:
    """What the fast path must know of each parameter, as Typer built it (``function``: its signature)."""
    import typing

    hints = typing.get_type_hints(function, include_extras=True)
    table = {}
    for param in params:
        annotation, info = typing.get_args(hints[param.name])[:2]
        table[param.name] = {
            "opts": list(param.opts) if param.param_type_name == "option" else [],
            "secondary_opts": list(getattr(param, "secondary_opts", [])), "flag": bool(getattr(param, "is_flag", 0)),
            "nargs": param.nargs, "required": bool(param.required), "default": param.default,
            "envvar": param.envvar if isinstance(param.envvar, str) else None, "type": _kind(annotation)[0],
            "choices": _kind(annotation)[1],
            "min": getattr(info, "min", None), "max": getattr(info, "max", None),
            "dirs_only": getattr(info, "file_okay", True) is False}
    return table


def _declared(options: Any) -> dict[str, Any]:
    return {option.name: {
        "opts": list(option.flags), "secondary_opts": [], "flag": option.kind == "bool",
        "nargs": -1 if option.kind == "list" and not option.flags else 1, "required": option.required,
        "default": option.default, "envvar": option.envvar, "type": option.kind, "choices": list(option.choices),
        "min": option.minimum, "max": option.maximum, "dirs_only": option.kind == "path" and not option.file_okay}
        for option in options}


def test_the_fast_path_reads_the_options_typer_builds():
    # one declaration (each command module's OPTIONS) for both parsers: what Typer made of it is what fast reads
    group = typer.main.get_command(app_module._make_app(fast.FAST_COMMANDS))
    root = _table([param for param in group.params if param.name != "version"], app_module._root)
    assert root == _declared(ROOT)
    for name in fast.FAST_COMMANDS:
        command = group.commands[name]
        assert _table(command.params, command.callback) == _declared(fast.options_of(name)), name


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.dcm").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    for name in ("CTGEN_MODEL", "CTGEN_DEVICE", "CTGEN_MAX_PIXELS", "CTGEN_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


TAKEN = [  # what shell loops type: the fast path must take these
    ["sample", "--n", "1", "--out", "x.png"],
    ["sample", "-n", "4", "-o", "s.npy", "--seed", "7", "-t", "0.5", "--prior", "standard", "-f", "-q"],
    ["sample", "--n=3", "--per-file", "folder", "--format", "dcm", "--window", "40,80", "--json"],
    ["-m", "tiny", "--seed", "3", "--device", "cpu", "sample", "--seed", "5"],  # the command's own option wins
    ["--quiet", "--json", "--force", "-w", "bone", "sample"],
    ["--max-pixels", "1000", "--debug", "encode", "a.dcm"],
    ["encode", "a.dcm", "folder", "-", "--out", "z.csv", "--logvar", "--skip-bad", "--batch-size", "8"],
    ["encode", "--shard", "2/3", "--", "-odd-name.dcm"],
    ["decode", "z.csv", "--out", "d.png", "--per-file", "new_folder"],
    ["decode", "-", "-o", "folder/"],
    ["reconstruct", "a.dcm", "folder", "--format", "png", "--out", "r.png"],
    ["traverse", "a.dcm", "--units", "0-4", "--steps", "7", "--range", "2.5"],
    ["traverse", "--units", "1,3"],
    ["interpolate", "a.dcm", "a.dcm#3", "--steps", "8", "--method", "lerp", "--gif"],
    ["interpolate", "a.dcm", "a.dcm", "--slice", "2", "--with-originals"],
]

LEFT_TO_TYPER = [  # help, errors and anything unusual: Typer parses and reports
    ["sample", "--help"], ["-h"], ["--version"], ["sample", "-h"], ["sample", "--n", "0"],
    ["sample", "--n", "x"], ["sample", "--bogus"], ["sample", "--out"], ["sample", "-n5"], ["sample", "--sam"],
    ["sample", "--prior", "wide"], ["sample", "--temperature", "nan"], ["sample", "--force=yes"],
    ["sample", "--per-file", "a.dcm"],  # a file where a folder goes
    ["sample", "--seed", "-3"],  # a value that looks like an option
    ["sample", "--n", "99999999999999999999"], ["sample", "--seed=-1"],
    ["interpolate", "a.dcm", "a.dcm", "--steps", "1001"], ["--seed", "4294967296", "sample"],  # beyond the bounds
    ["encode"], ["decode"], ["decode", "a", "b"], ["interpolate", "a.dcm"], ["samplx"], [], ["--model"],
    ["--max-pixels", "0", "encode", "a.dcm"], ["info"], ["units"], ["scan", "folder"],
]


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_the_fast_path_takes_common_command_lines_as_typer_does(argv, places, monkeypatch):
    assert assert_same(argv, monkeypatch) is not None


@pytest.mark.parametrize("argv", LEFT_TO_TYPER, ids=lambda argv: " ".join(argv) or "(nothing)")
def test_anything_else_is_left_to_typer(argv, places):
    assert fast.parse(argv) is None


def test_environment_variables_come_before_the_root_options_as_in_click(places, monkeypatch):
    monkeypatch.setenv("CTGEN_MODEL", "from-env")
    monkeypatch.setenv("CTGEN_DEVICE", "cpu")
    monkeypatch.setenv("CTGEN_MAX_PIXELS", "4096")
    call = assert_same(["-m", "from-root", "sample"], monkeypatch)
    assert call is not None and call.arguments["model"] == "from-env" and call.arguments["device"] == "cpu"
    assert call.max_pixels == 4096
    call = assert_same(["sample", "--model", "given"], monkeypatch)
    assert call is not None and call.arguments["model"] == "given"
    monkeypatch.setenv("CTGEN_DEVICE", "tpu")
    assert fast.parse(["sample"]) is None  # a bad value from the environment: Typer names it


_VALUES = {"int": ["1", "3", "0", "12", "-2", "x", "4096", "1001", "99999999999999999999"],
           "float": ["0.5", "2", "1e-3", "nan", "-1.5", "100", "1e308"],
           "path": ["folder", "new", "a.dcm", "folder/"], "bool": [],
           "str": ["x.png", "s.npy", "z.csv", "folder/", "a.dcm#2", "0-4", "2/3", "40,80", "bone", "-", ""],
           "list": ["2", "rotation_deg=-20:20", "rotation_deg=+10", "level==-1", "x", "1e308", ""]}  # repeatable


@st.composite
def command_lines(draw) -> list[str]:
    """Mostly well-formed command lines built from the table (options in any order, every spelling, --x=v), with
    now and then a bad value, a repeated option, a stray token or a missing argument."""
    def option_tokens(param: Any) -> list[str]:
        spelling = draw(st.sampled_from(param.flags))
        if param.kind == "bool":
            return [spelling]
        values = [*param.choices, "bogus"] if param.kind == "choice" else _VALUES[param.kind]
        value = draw(st.sampled_from(values))
        return [f"{spelling}={value}"] if spelling.startswith("--") and draw(st.booleans()) else [spelling, value]

    root = [token for param in draw(st.lists(st.sampled_from(ROOT), max_size=3)) for token in option_tokens(param)]
    command = draw(st.sampled_from(list(fast.FAST_COMMANDS)))
    params = fast.options_of(command)
    pieces = [option_tokens(param) for param in draw(st.lists(st.sampled_from(
        [param for param in params if param.flags]), max_size=6))]
    for param in params:
        if not param.flags:
            count = draw(st.integers(0 if not param.required else 1, 3 if param.kind == "list" else 1))
            pieces += [[draw(st.sampled_from(["a.dcm", "folder", "-", "a.dcm#1"]))] for _ in range(count)]
    pieces = draw(st.permutations(pieces))
    tokens = [token for piece in pieces for token in piece]
    noise = draw(st.sampled_from([None, None, None, "--", "-h", "--unknown", "extra", "-qf"]))
    if noise is not None:
        tokens.insert(draw(st.integers(0, len(tokens))), noise)
    return [*root, command, *tokens]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_whatever_the_fast_path_takes_typer_takes_the_same_way(argv, places, monkeypatch):
    assert_same(argv, monkeypatch)


def test_errors_on_the_fast_path_are_one_line_with_the_exit_status(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    environment.pop("CTGEN_NO_FAST_PATH", None)
    (tmp_path / "bad.dcm").write_bytes(b"not dicom")
    result = subprocess.run([sys.executable, "-m", "ctgen", "-q", "encode", "bad.dcm"], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ctgen: error: ") and "bad.dcm" in result.stderr
    result = subprocess.run([sys.executable, "-m", "ctgen", "sample", "--out", "x.txt"], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1) and result.stderr.startswith("ctgen: error: --out")
    assert not list(tmp_path.glob("x*"))


def test_the_fast_path_imports_no_typer(tmp_path):
    code = ("import sys; from ctgen.cli import main\ntry:\n    main(['-q', 'sample', '--n', '1', '--out', 'x.png'])\n"
            "except SystemExit as done:\n    assert done.code == 0, done.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click', 'rich', 'pydicom')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "x.png").stat().st_size > 0


def test_the_typer_path_coerces_options_without_pydantic(tmp_path):
    # ctgen.cli.coerce: every declared option, Typer's own flags (--version) and a refused value, without pydantic
    code = ("import sys; from ctgen.cli import main\nfor argv in (['example', '--folder'], ['--version'], "
            "['sample', '--n', '0'], ['-q', 'traverse', '--steps', '3', '--units', '0', '--real-no']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('pydantic' in sys.modules)")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CTGEN_NO_FAST_PATH": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert "--n: 0 is smaller than the minimum 1" in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_command_line_keeps_freed_slice_memory_for_reuse():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    code = "from ctgen.cli.entry import _keep_freed_memory as keep; print(keep())"  # in its own process
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "True"
