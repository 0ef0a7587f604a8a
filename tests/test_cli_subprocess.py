"""ctgen as real processes: exit codes, streams, start-up time, and PyTorch never imported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CT_SMALL, DEFAULT_MODEL, REPO_ROOT, files_under, run_ctgen, save_dicom, write_heads


def test_version_and_help_start_fast(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    timings = {}
    for args in (["--version"], ["--help"]):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "ctgen", *args], cwd=tmp_path, env=env,
                                    capture_output=True, text=True)
            best = min(best, time.perf_counter() - start)
            assert result.returncode == 0 and result.stdout
        timings[" ".join(args)] = best
    print(f"start-up: {timings}")
    assert timings["--version"] < 1.5 and timings["--help"] < 1.5  # target 0.3 s; generous for shared CI
    probe = ("import sys, ctgen.cli; heavy = {'numpy', 'onnxruntime', 'pydicom', 'PIL', 'torch'} & set(sys.modules);"
             "print(sorted(heavy))")
    loaded = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_every_command_runs_without_torch(tiny_model_dir, tmp_path, heads):
    model = ["-m", tiny_model_dir]
    steps = [
        ["sample", "--n", 4, "--per-file", "samples", "--format", "dcm", *model],
        ["interpolate", heads[0], heads[2], "--steps", 3, "--gif", *model],
        ["traverse", heads[0], "--units", "0-2", *model],
        ["encode", heads[0].parent, "-o", "latents.npz", *model],
        ["decode", "latents.npz", "--per-file", "decoded", *model],
        ["reconstruct", heads[1], *model],
        ["info", *model],
        ["units", *model],
    ]
    for args in steps:
        result = run_ctgen(args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    produced = files_under(tmp_path)
    for expected in ("samples/sample_00003.dcm", "interpolation.png", "interpolation.gif", "traverse.png",
                     "latents.npz", "decoded/decoded_00005.png", "reconstructions/0001.png"):
        assert expected in produced


def test_encode_stdout_is_json_lines_while_progress_runs(tiny_model_dir, tmp_path, heads):
    forced_terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "100"}
    result = run_ctgen(["encode", heads[0].parent, "-m", tiny_model_dir, "--batch-size", 2], cwd=tmp_path,
                       env=forced_terminal)
    assert result.returncode == 0, result.stderr
    assert "encoding" in result.stderr  # the progress bar drew on stderr ...
    records = [json.loads(line) for line in result.stdout.splitlines()]  # ... and stdout stayed clean
    assert len(records) == len(heads) and all(len(r["mu"]) == 8 for r in records)
    piped = run_ctgen(["decode", "-", "-m", tiny_model_dir, "-o", "recon.npy"], cwd=tmp_path, input=result.stdout)
    assert piped.returncode == 0, piped.stderr
    assert np.load(tmp_path / "recon.npy").shape == (len(heads), 64, 64)


def test_exit_codes_of_the_real_process(tiny_model_dir, tmp_path):
    usage = run_ctgen(["sample", "--n", "zero"], cwd=tmp_path, check_torch=False)
    assert usage.returncode == 2 and usage.stdout == ""
    missing = run_ctgen(["encode", "absent.dcm", "-m", tiny_model_dir], cwd=tmp_path, check_torch=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == "ctgen: error: absent.dcm: no such file or folder\n"
    skipped = run_ctgen(["encode", CT_SMALL, "absent.dcm", "-m", tiny_model_dir, "--skip-bad"], cwd=tmp_path)
    assert skipped.returncode == 1 and len(skipped.stdout.splitlines()) == 1
    assert skipped.stderr.startswith("ctgen: skipped absent.dcm: no such file or folder\n")
    debug = run_ctgen(["--debug", "encode", "absent.dcm", "-m", tiny_model_dir], cwd=tmp_path, check_torch=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DicomError" in debug.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interrupt_exits_130_without_traceback(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "ctgen", "sample", "--n", "200000", "--per-file", "out",
                                "-m", str(tiny_model_dir)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((tmp_path / "out").glob("*.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().endswith("ctgen: interrupted") and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # no files, no temporaries, not the folder the run made


@pytest.mark.skipif(not (DEFAULT_MODEL / "model.json").is_file(), reason="models/default is not built")
def test_mission_commands_on_the_shipped_model(tmp_path):
    """The three commands of the mission, exactly as typed, with models/default found by name."""
    slice_a = tmp_path / "a.dcm"
    slice_b = tmp_path / "b.dcm"
    from conftest import write_heads

    for path, written in zip((slice_a, slice_b), write_heads(tmp_path / "heads", 2, size=256, spacing_mm=0.9)):
        written.rename(path)
    for args in (["sample", "--n", "16"], ["interpolate", "a.dcm", "b.dcm", "--steps", "8"],
                 ["traverse", "a.dcm", "--units", "0-4"], ["reconstruct", "a.dcm"], ["units"]):
        result = run_ctgen(args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
    assert {"samples.png", "interpolation.png", "traverse.png"} <= set(files_under(tmp_path))


def test_tables_written_to_a_pipe_keep_each_row_on_one_line(tiny_model_dir, tmp_path):  # issue 24, item 5
    import shutil

    import pydicom

    model = shutil.copytree(tiny_model_dir, tmp_path / ("a-rather-long-folder-name-" * 4) / "tiny")
    info = run_ctgen(["info", "-m", model], cwd=tmp_path)  # stdout is a pipe here, as in `ctgen info | less`
    assert info.returncode == 0, info.stderr
    rows = info.stdout.splitlines()
    keys = [row.split()[0] for row in rows]
    assert keys[:3] == ["model", "grid", "latent"] and "versions" in keys and len(keys) == len(set(keys)), rows
    assert f"({model})" in rows[0]  # the path whole, not split mid-word
    assert [row for row in rows if row.endswith(" ")] == []  # not padded to the widest row

    archive = tmp_path / "archive"
    description = "axial brain without contrast, soft tissue kernel, 5 mm slices"  # LO: up to 64
    for path in write_heads(archive, 3):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        save_dicom(ds, path)
    (archive / "cut.dcm").write_bytes(path.read_bytes()[:1000])
    scan = run_ctgen(["scan", archive], cwd=tmp_path)  # stderr is a pipe, as in `ctgen scan DIR 2> log`
    assert scan.returncode == 0, scan.stderr
    table = scan.stderr.splitlines()
    body = [line for line in table if line.startswith("│")]
    assert len(body) == 2, scan.stderr  # the series, and the truncated file of it: one line each
    assert f"#1 {description}" in body[0] and description in body[1] and "1 truncated" in body[1]
