"""Bad input gives one line on stderr and exit 1; bad usage exits 2; never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CT_SMALL, MR_SMALL, colour_file, files_under, invoke, not_dicom, one_error_line, one_usage_line


@pytest.mark.parametrize("command", ["encode", "reconstruct", "interpolate", "traverse"])
def test_missing_file(model, workdir, command):
    args = [command, "missing.dcm"] + (["missing.dcm"] if command == "interpolate" else [])
    one_error_line(invoke(*args, "-m", model), "missing.dcm", "no such file")


@pytest.mark.parametrize("make, reason", [(not_dicom, "notes.dcm"), (colour_file, "colour"),
                                          (lambda folder: MR_SMALL, "MR")])
@pytest.mark.parametrize("command", ["encode", "reconstruct", "traverse"])
def test_unusable_slices(model, workdir, make, reason, command):
    path = make(workdir)
    line = one_error_line(invoke(command, path, "-m", model), str(path), reason)
    assert not (workdir / "traverse.png").exists() and not (workdir / "reconstructions").exists(), line


def test_interpolate_refuses_mr(model, workdir):
    one_error_line(invoke("interpolate", CT_SMALL, MR_SMALL, "-m", model), "MR_small.dcm", "not CT")
    assert files_under(workdir) == []


@pytest.mark.parametrize(
    "content, fragments",
    [
        (np.zeros((2, 7), np.float32), ["width 7", "expects 8"]),
        (np.array([[0.0] * 8, [np.nan] + [0.0] * 7], np.float32), ["NaN", "row 2"]),
        (np.array([[np.inf] * 8], np.float32), ["infinite"]),
    ],
)
def test_bad_latent_files(model, workdir, content, fragments):
    np.save(workdir / "z.npy", content)
    one_error_line(invoke("decode", "z.npy", "-m", model), "z.npy", *fragments)
    lines = "\n".join(json.dumps({"mu": [None if np.isnan(v) else float(v) for v in row]}) for row in content)
    one_error_line(invoke("decode", "-", "-m", model, input=lines), "<stdin>")
    assert not (workdir / "decoded.png").exists()


@pytest.mark.parametrize(
    "name, text, fragment",
    [("z.csv", "mu_0,mu_1\n1,x\n", "row 2"), ("z.jsonl", '{"mu": [1, 2]}\n{"nope": 1}\n', "line 2"),
     ("z.jsonl", "[1, 2\n", "not JSON"), ("z.txt", "", "no latent vectors"), ("z.bin", "1", "unsupported")],
)
def test_unreadable_latent_files(model, workdir, name, text, fragment):
    (workdir / name).write_text(text)
    one_error_line(invoke("decode", name, "-m", model), name, fragment)


def test_missing_latent_file(model, workdir):
    one_error_line(invoke("decode", "nothing.npy", "-m", model), "nothing.npy", "no such file")


def test_missing_and_corrupt_models(workdir, tiny_model_copy):
    one_error_line(invoke("sample", "-m", workdir / "nowhere"), "nowhere", "no such model folder")
    one_error_line(invoke("sample", "-m", "no-such-name"), "no-such-name")
    (tiny_model_copy / "decoder.onnx").write_bytes(b"garbage")
    one_error_line(invoke("sample", "-m", tiny_model_copy), "decoder.onnx", "checksum mismatch")
    one_error_line(invoke("info", "-m", tiny_model_copy), "decoder.onnx", "checksum mismatch")
    (tiny_model_copy / "model.json").write_text("{not json")
    one_error_line(invoke("units", "-m", tiny_model_copy), "model.json", "not valid JSON")
    assert not (workdir / "samples.png").exists()


@pytest.mark.parametrize("spec, fragment", [("12", "unknown unit 12"), ("0-99", "unknown unit 8"),
                                            ("top0", "between 1 and 8"), ("x", "cannot parse")])
def test_unknown_units(model, workdir, spec, fragment):
    line = one_usage_line(invoke("traverse", "-m", model, "--units", spec), fragment)
    assert line.startswith("ctgen: error: --units: ")


@pytest.mark.parametrize("spec", ["0/4", "5/4", "1/0", "half", "1-4"])
def test_bad_shard(model, workdir, heads, spec):
    one_usage_line(invoke("encode", heads[0], "-m", model, "--shard", spec), "--shard")


def test_other_bad_options(model, workdir, heads):
    one_usage_line(invoke("sample", "-m", model, "-w", "lung"), "--window", "bad window 'lung'")
    one_usage_line(invoke("encode", heads[0], "-m", model, "--json"), "--json", "needs --out")
    one_usage_line(invoke("encode", heads[0], "-m", model, "-o", "z.npy", "--logvar"), "--logvar")
    one_usage_line(invoke("traverse", "-m", model, "--range", "0"), "--range")
    one_error_line(invoke("encode", workdir, "-m", model), "no DICOM files found")
    assert files_under(workdir) == []


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "--bogus"],
        ["sample", "--n", "0"],
        ["sample", "--n", "many"],
        ["sample", "--device", "gpu"],
        ["sample", "--format", "jpg", "--per-file", "x"],
        ["interpolate", "a.dcm"],
        ["interpolate", "a.dcm", "b.dcm", "--method", "cubic"],
        ["encode"],
        ["decode"],
        ["transmogrify"],
        [],
    ],
)
def test_usage_errors_exit_2(workdir, args):
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == "" or not args  # bare `ctgen` prints its help
    if args:
        one_usage_line(result)  # no usage box
    assert files_under(workdir) == []


USAGE_LINES = [  # (argument list, the whole line on stderr)
    (["sample", "--num", "3"], "--num: no such option (did you mean --n?)"),
    (["sample", "--temprature", "0.5"], "--temprature: no such option (did you mean --temperature?)"),
    (["traverse", "--unit", "0"], "--unit: no such option (did you mean --units?)"),
    (["sample", "-x"], "-x: no such option"),
    (["sample", "--debug"], "--debug: no such option of ctgen sample (give it before the command: ctgen --debug "
                            "sample …)"),
    (["--n", "4", "sample"], "--n: no such option before the command (--n is an option of sample: give it after "
                             "the command)"),
    (["smaple"], "smaple: no such command (did you mean sample?)"),
    (["--quiet", "travers"], "travers: no such command (did you mean traverse?)"),
    (["sample", "--n", "many"], "--n: 'many' is not a valid integer"),
    (["sample", "--device", "gpu"], "--device: 'gpu' is not one of 'auto', 'cpu', 'cuda'"),
    (["sample", "--n"], "--n: needs a value"),
    (["sample", "--force=yes"], "--force: does not take a value"),
    (["interpolate", "a.dcm"], "B.dcm: missing argument"),
    (["sample", "extra"], "extra: unexpected argument to ctgen sample"),
]


@pytest.mark.parametrize("args, line", USAGE_LINES, ids=[" ".join(args) for args, _ in USAGE_LINES])
def test_usage_errors_are_one_line_naming_the_option(workdir, args, line):
    result = invoke(*args)
    assert (result.exit_code, result.stderr, result.stdout) == (2, f"ctgen: error: {line}\n", "")


def test_help_is_still_typers(workdir):
    result = invoke("sample", "--help")
    assert result.exit_code == 0 and "--temperature" in result.stdout and "Usage" in result.stdout


def test_device_cuda_is_honoured_or_refused(model, workdir):
    result = invoke("sample", "-m", model, "--device", "cuda", "--json")
    if result.exit_code == 0:  # a machine with a working CUDA provider
        assert json.loads(result.stdout)["model"]["provider"] == "CUDAExecutionProvider"
    else:
        one_error_line(result, "device cuda", "--device auto or cpu")
        assert not (workdir / "samples.png").exists()
