"""The command line's contract, walked over every command and option: a usage error (a bad option value, an
unknown option, a missing argument) exits 2; a bad input (an unreadable file, a missing model) exits 1; both
say so on stderr without a traceback and write nothing. Also: --out DIR/ means a folder everywhere, and the
same command gives byte-identical DICOM files."""

from __future__ import annotations

import typing
from pathlib import Path

import pydicom
import pytest
import typer

from conftest import files_under, invoke, not_dicom, one_error_line
from ctgen.cli import app

COMMANDS = typer.main.get_command(app).commands
# string options whose values ctgen parses itself: a value each must refuse as a usage error
BAD_TEXT = {"units": "junk", "window": "lung", "shard": "0/4", "out": "picture.jpeg", "name": "no-such-example",
            "latents": None, "host": None, "value_range": "rotation_deg=1:0", "settings": "rotation_deg"}
# options whose bad value is a bad input (exit 1), not a usage error
BAD_INPUT = {"model": "no-such-model", "host": "256.1.1.1"}


def _annotation(param) -> typing.Any:
    annotation = param.type_descriptor.annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType"))\
        and len(args) == 1 else annotation


def _bad_value(param, workdir: Path) -> tuple[str, int] | None:
    """A value for ``param`` that the command must refuse, and the exit code it must give."""
    if param.name in BAD_INPUT:
        return BAD_INPUT[param.name], 1
    annotation = _annotation(param)
    if annotation in (int, float):
        return "not-a-number", 2
    if typing.get_origin(annotation) is typing.Literal:
        return "bogus", 2
    if annotation is Path:  # folders where files belong and files where folders belong: usage errors
        a_file, a_folder = workdir / "a-file.txt", workdir / "a-folder"
        a_file.write_text("x")
        a_folder.mkdir(exist_ok=True)
        return (str(a_folder), 2) if param.name in ("factors", "split") else (str(a_file), 2)
    if BAD_TEXT.get(param.name):
        return BAD_TEXT[param.name], 2
    return None


def _required_args(name: str, heads: list[Path], workdir: Path) -> list[str]:
    """Valid positional arguments for a command, so that only the option under test is wrong."""
    latents = workdir / "z.csv"
    latents.write_text("0,0,0,0,0,0,0,0\n")
    study = workdir / "study"
    study.mkdir(exist_ok=True)
    return {"interpolate": [str(heads[0]), str(heads[1])], "encode": [str(heads[0])], "reconstruct": [str(heads[0])],
            "decode": [str(latents)], "evaluate": [str(study)], "scan": [str(heads[0].parent)],
            "edit": [str(heads[0]), "--set", "rotation_deg=+1"]}.get(name, [])


@pytest.fixture
def never_serve(monkeypatch):
    """`ctgen explore` must fail before it serves: a server that starts is a failed test, not a hang."""
    from ctgen.explorer.explore import ExploreServer

    def refuse(self, *args, **kwargs):
        raise RuntimeError("the explorer started serving")

    monkeypatch.setattr(ExploreServer, "serve_forever", refuse)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_value_error_exits_2_and_bad_inputs_exit_1(command, model, workdir, heads, never_serve):
    walked = []
    for param in COMMANDS[command].params:
        if not param.opts[0].startswith("-") or param.is_flag:
            continue
        bad = _bad_value(param, workdir)
        assert bad is not None, f"ctgen {command} {param.opts[0]}: add a bad value for this option to the walk"
        value, code = bad
        model_args = [] if param.name == "model" or command in ("example", "scan") else ["-m", model]
        result = invoke(command, *_required_args(command, heads, workdir), param.opts[0], value, *model_args)
        assert result.exit_code == code, (command, param.opts[0], value, result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == "", (command, param.opts[0], result.stderr)
        if code == 1 or (param.name in BAD_TEXT and _annotation(param) is str):  # ctgen's own checks: one line
            one_error_line(result, exit_code=code)
        walked.append(param.opts[0])
    unknown = invoke(command, "--no-such-option")
    assert unknown.exit_code == 2, unknown.stderr
    assert sorted(p for p in files_under(workdir) if not p.startswith(("a-file", "z.csv"))) == [], command
    print(f"ctgen {command}: walked {walked}")


def test_every_numeric_option_declares_its_bounds():
    # issue 23.11: a count, seed, step or range beyond them is a usage error on every command (and on the fast
    # path, whose table copies them), before anything is allocated or computed
    from ctgen.cli.options import BOUNDS

    root = typer.main.get_command(app)
    unbounded = [f"{name} {param.opts[0]}" for name, command in [("ctgen", root), *COMMANDS.items()]
                 for param in command.params if param.param_type_name == "option" and not param.is_flag
                 and _annotation(param) in (int, float) and (param.min is None or param.max is None)]
    assert unbounded == []
    declared = {(param.min, param.max) for command in [root, *COMMANDS.values()] for param in command.params
                if getattr(param, "min", None) is not None}
    assert declared <= {(bounds["min"], bounds["max"]) for bounds in BOUNDS.values()}  # one table


@pytest.mark.parametrize("command, args", [
    ("interpolate", ["{bad}", "{good}"]), ("interpolate", ["{good}", "{missing}"]), ("traverse", ["{bad}"]),
    ("encode", ["{bad}"]), ("encode", ["{missing}"]), ("reconstruct", ["{bad}"]), ("decode", ["{bad}"]),
    ("decode", ["{missing}"]), ("explore", ["{bad}", "--no-browser"]), ("evaluate", ["{missing}"]),
])
def test_bad_inputs_exit_1_with_one_line_naming_the_file(command, args, model, workdir, heads, never_serve):
    bad, missing = not_dicom(workdir), workdir / "missing.dcm"
    names = {"bad": str(bad), "good": str(heads[0]), "missing": str(missing)}
    argv = [arg.format(**names) for arg in args]
    result = invoke(command, *argv, "-m", model)
    named = str(bad) if "{bad}" in args else "missing"
    one_error_line(result, named)
    assert files_under(workdir) == ["notes.dcm"]


def test_missing_arguments_are_usage_errors(model, workdir):
    for command in ("interpolate", "encode", "decode", "reconstruct", "evaluate", "scan"):
        result = invoke(command, "-m", model)
        assert result.exit_code == 2, (command, result.stderr)


@pytest.mark.parametrize("command, args, written", [
    ("sample", ["--n", "2"], "samples.png"),
    ("decode", ["{latents}"], "decoded.png"),
    ("traverse", ["--units", "0-1"], "traverse.png"),
    ("interpolate", ["{a}", "{b}", "--steps", "3"], "interpolation.png"),
    ("encode", ["{a}"], "latents.npz"),
])
def test_out_with_a_trailing_slash_is_a_new_folder(command, args, written, model, workdir, heads):
    latents = workdir / "z.csv"
    latents.write_text("0,0,0,0,0,0,0,0\n")
    argv = [arg.format(latents=latents, a=heads[0], b=heads[1]) for arg in args]
    result = invoke(command, *argv, "-m", model, "--out", "newdir/")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "newdir" / written).is_file()


def test_reconstruct_out_folder(model, workdir, heads):
    assert invoke("reconstruct", heads[0], "-m", model, "--out", "panels/").exit_code == 0
    assert (workdir / "panels" / f"{Path(heads[0]).stem}.png").is_file()


def test_same_command_gives_byte_identical_dicom(model, workdir):
    for folder in ("d1", "d2"):
        result = invoke("sample", "--n", "2", "--per-file", folder, "--format", "dcm", "--seed", "1", "-m", model)
        assert result.exit_code == 0, result.stderr
    first, second = sorted((workdir / "d1").iterdir()), sorted((workdir / "d2").iterdir())
    assert [p.name for p in first] == [p.name for p in second] == ["sample_00000.dcm", "sample_00001.dcm"]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    other = invoke("sample", "--n", "2", "--per-file", "d3", "--format", "dcm", "--seed", "2", "-m", model)
    assert other.exit_code == 0
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in [*first, *sorted((workdir / "d3").iterdir())]}
    assert len(uids) == 4  # another seed is another command: new UIDs


def test_dicom_dates_follow_source_date_epoch(model, workdir):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    assert invoke("sample", "--n", "1", "--per-file", "d", "--format", "dcm", "-m", model, env=env).exit_code == 0
    ds = pydicom.dcmread(next((workdir / "d").iterdir()))
    assert ds.ContentDate == "20231114" and ds.StudyDate == "20231114"


def test_ordered_series_say_what_they_are(model, workdir, heads):
    result = invoke("interpolate", heads[0], heads[1], "--steps", "4", "--per-file", "path", "--format", "dcm",
                    "-m", model)
    assert result.exit_code == 0, result.stderr
    path = [pydicom.dcmread(p) for p in sorted((workdir / "path").iterdir())]
    assert len({d.SeriesInstanceUID for d in path}) == 1 and [d.InstanceNumber for d in path] == [1, 2, 3, 4]
    assert "path" in path[0].SeriesDescription and "step 2 of 4" in path[1].ImageComments
    result = invoke("traverse", "--units", "0-1", "--steps", "3", "--per-file", "grid", "--format", "dcm", "-m", model)
    assert result.exit_code == 0, result.stderr
    cells = [pydicom.dcmread(p) for p in sorted((workdir / "grid").iterdir())]
    assert len({d.SeriesInstanceUID for d in cells}) == 2  # one ordered series per unit
    assert {d.SeriesDescription for d in cells} == {"ctgen traverse u0 -3..+3", "ctgen traverse u1 -3..+3"}


def test_cuda_error_names_the_extra(model, workdir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        from ctgen.runtime.model import load_model

        try:
            load_model(model, device="cuda")
        except Exception:  # noqa: BLE001 - no usable GPU: the message is what this test checks
            pass
        else:
            pytest.skip("CUDA really loads here")
    from ctgen.runtime.ort_session import cuda_driver_present

    # without a driver no pip package helps; with one, the CUDA and cuDNN wheels (the cuda extra) are what lacks
    remedy = "ctgen[cuda]" if cuda_driver_present() else "no NVIDIA driver on this machine"
    one_error_line(invoke("sample", "--n", "1", "-m", model, "--device", "cuda"), remedy, "--device auto or cpu")


def test_example_slices_ship_and_run(model, workdir):
    result = invoke("example")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    path = invoke("example", "a").stdout.strip()
    assert Path(path).is_file()
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    assert invoke("traverse", path, "--units", "0-4", "-m", model).exit_code == 0
    folder = invoke("example", "--folder").stdout.strip()
    assert sorted(p.name for p in Path(folder).iterdir()) == ["a.dcm", "b.dcm", "c.dcm"]  # nothing scan leaves out
    encoded = invoke("encode", folder, "-m", model, "-o", "z.npz")
    assert encoded.exit_code == 0 and "note" not in encoded.stderr  # the README's quick start: no note line


@pytest.mark.parametrize("argv, expected", [
    (["sample", "--n", "1"], "sample"),
    (["-m", "sample", "--seed", "3", "encode", "x.dcm"], "encode"),  # a root option's value is not a command
    (["--model=sample", "units"], "units"),
    (["--quiet", "--json", "info"], "info"),
    (["--help"], None),
    (["--help", "sample"], None),  # the root's help, which lists every command
    (["-h", "sample"], None),
    ([], None),
    (["samplx"], None),  # unknown: the full app lists the commands
])
def test_main_builds_only_the_command_that_runs(argv, expected):
    from ctgen.cli.typer_app import _COMMANDS, _invoked_command

    assert _invoked_command(argv) == expected
    assert set(typer.main.get_command(app).commands) == set(_COMMANDS)  # the full app keeps every command
