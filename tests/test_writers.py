"""Outputs under hostile conditions: a full disk, a second run writing into the same folder, a file that appears
during a run, Ctrl-C, SIGTERM and SIGKILL. Each ends with one error line (or exit 130) and nothing half-written
left behind; temporaries of killed runs are removed the next time ctgen writes there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_MODEL, REPO_ROOT, files_under, invoke, one_error_line


def _ctgen(args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "ctgen", *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skips where it cannot be mounted."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ---------------------------------------------------------------------------------------- full disks
def test_npy_stack_on_a_full_disk_is_one_line_and_leaves_nothing(model, full_disk, workdir):
    result = invoke("sample", "--n", 200, "-m", model, "--out", full_disk / "stack.npy")  # 3.3 MB > 2 MiB
    line = one_error_line(result, "stack.npy")
    assert "No space left" in line
    assert files_under(full_disk) == []


def test_per_file_dicom_on_a_full_disk_takes_everything_back(model, full_disk, workdir):
    result = invoke("sample", "--n", 300, "-m", model, "--per-file", full_disk / "d", "--format", "dcm")
    line = one_error_line(result, "No space left")
    assert "Traceback" not in line and ".ctgen-" not in line
    assert files_under(full_disk) == [] and list(full_disk.iterdir()) == []  # the folder it made too


def _fill(folder: Path, room: int) -> None:
    """Fill the file system of ``folder`` up to ``room`` free bytes."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        with pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 4096)
        handle.truncate(handle.tell() - room)


@pytest.mark.skipif(not (DEFAULT_MODEL / "model.json").is_file(), reason="models/default is not built")
def test_dicom_on_a_disk_full_from_the_start_is_one_line(full_disk, tmp_path):
    """The pixel data's write (32 KB at 128², more than the file's buffer) fails inside pydicom, which wraps the
    error with a whole traceback in its message: still one line naming the file, on the real process's stderr."""
    _fill(full_disk, room=8192)  # the header fits, the pixel data does not
    result = subprocess.run([sys.executable, "-m", "ctgen", "sample", "--n", "3", "-m", DEFAULT_MODEL, "--per-file",
                             str(full_disk / "d"), "--format", "dcm"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"ctgen: error: {full_disk}/d/sample_00000.dcm: No space left on device"]
    assert files_under(full_disk) == ["filler"] and list(full_disk.iterdir()) == [full_disk / "filler"]


# ---------------------------------------------------------------------------------------- races
def test_a_file_that_appears_during_a_run_is_never_overwritten(model, workdir, monkeypatch):
    import ctgen.io.writers as writers_module

    (workdir / "out").mkdir()
    (workdir / "out" / "sample_00003.png").write_bytes(b"not ours")
    monkeypatch.setattr(writers_module, "check_targets", lambda paths, force: None)  # as if it appeared after the check
    result = invoke("sample", "--n", 6, "-m", model, "--per-file", "out", "--batch-size", 2)
    one_error_line(result, "sample_00003.png", "already exists")
    assert files_under(workdir / "out") == ["sample_00003.png"]  # ours were taken back, theirs is intact
    assert (workdir / "out" / "sample_00003.png").read_bytes() == b"not ours"


def _race(model: str, workdir: Path) -> None:
    runs = [_ctgen(["sample", "--n", 40, "-m", model, "--per-file", "shared", "--format", "dcm", "--seed", seed,
                    "--batch-size", 4], workdir) for seed in (1, 2)]
    codes = [run.wait(timeout=120) for run in runs]
    assert sorted(codes) in ([0, 1], [0, 0]) or codes == [1, 1], codes
    files = files_under(workdir / "shared") if (workdir / "shared").exists() else []
    assert not any(".ctgen-" in name for name in files)
    if 0 in codes:  # exactly one complete run's files, never a mix of two studies
        import pydicom

        assert len(files) == 40
        assert len({pydicom.dcmread(workdir / "shared" / name).StudyInstanceUID for name in files}) == 1


def test_two_runs_into_one_folder_never_mix(model, workdir):
    _race(model, workdir)


@pytest.mark.slow
def test_two_runs_into_one_folder_never_mix_20_times(model, tmp_path):
    for trial in range(20):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        _race(model, folder)


# ---------------------------------------------------------------------------------------- signals
def _interrupted_run(model: str, workdir: Path, sig: int) -> subprocess.CompletedProcess:
    # 50,000 files take the tiny model minutes, so the signal lands mid-run. A 5,000-file run once ended with exit 0
    # and all its files on a CI run (not reproduced in 9 runs since): whether it finished before the signal or
    # lost it is not known, so the test now says which (the assertion below) instead of judging a finished run
    run = _ctgen(["sample", "--n", 50000, "-m", model, "--per-file", "many", "--format", "dcm", "--batch-size", 8],
                 workdir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((workdir / "many").glob("*.dcm")) if (workdir / "many").exists()
                                              else []) < 20:
        time.sleep(0.05)
    assert run.poll() is None, f"the run ended before it could be interrupted: {run.communicate()[1][-500:]}"
    run.send_signal(sig)
    stdout, stderr = run.communicate(timeout=120)
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_per_file_run_leaves_nothing(model, workdir, sig):
    result = _interrupted_run(model, workdir, sig)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "ctgen: interrupted" in result.stderr
    assert files_under(workdir / "many") == []


def test_temporaries_of_a_killed_run_are_removed_next_time(model, workdir):
    result = _interrupted_run(model, workdir, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    rerun = invoke("sample", "--n", 2, "-m", model, "--per-file", "many", "--format", "dcm", "--force")
    assert rerun.exit_code == 0, rerun.stderr
    assert not any(".ctgen-" in name for name in files_under(workdir / "many"))


@pytest.mark.slow
def test_kills_and_full_disks_20_times(model, tmp_path, full_disk):
    for trial in range(20):
        folder = tmp_path / f"kill{trial}"
        folder.mkdir()
        assert _interrupted_run(model, folder, signal.SIGTERM).returncode == 130
        assert files_under(folder / "many") == []
        result = subprocess.run([sys.executable, "-m", "ctgen", "sample", "--n", "300", "-m", model, "--per-file",
                                 str(full_disk / f"d{trial}"), "--format", "dcm"], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert result.returncode == 1 and files_under(full_disk) == []


def test_npy_stack_is_streamed_in_order(tmp_path):
    from ctgen.io.writers import NpyStack

    path = tmp_path / "s.npy"
    with NpyStack(path, (5, 4, 4), force=False) as stack:
        stack.write(0, np.zeros((2, 4, 4), np.float32))
        stack.write(2, np.ones((3, 4, 4), np.float32))
    loaded = np.load(path)
    assert loaded.shape == (5, 4, 4) and loaded[2:].min() == 1.0
    with pytest.raises(Exception, match="2 of 5 images"), NpyStack(tmp_path / "t.npy", (5, 4, 4), force=False) as stack:
        stack.write(0, np.zeros((2, 4, 4), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


# ---------------------------------------------------------------------------------------- the run's transaction
def _ctgen_to_full_stdout(args, cwd: Path, fast_path: bool = True) -> subprocess.CompletedProcess:
    """ctgen with stdout on /dev/full: every write to stdout fails with ENOSPC."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CTGEN_NO_FAST_PATH": "0" if fast_path else "1"}
    with open("/dev/full", "w") as full:
        return subprocess.run([sys.executable, "-m", "ctgen", *map(str, args)], cwd=cwd, env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)


def _stdout_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ctgen: error")]
    assert errors == ["ctgen: error: <stdout>: No space left on device"], result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("fast_path", [True, False])
def test_a_run_whose_stdout_fails_takes_its_outputs_back(model, workdir, fast_path):
    from conftest import CT_SMALL

    _stdout_error(_ctgen_to_full_stdout(["--json", "sample", "--n", 1, "-m", model, "--out", "s.png"], workdir,
                                        fast_path))
    _stdout_error(_ctgen_to_full_stdout(["--json", "encode", CT_SMALL, "-m", model, "--out", "l.npz"], workdir,
                                        fast_path))
    _stdout_error(_ctgen_to_full_stdout(["encode", CT_SMALL, "-m", model], workdir, fast_path))  # JSON lines
    _stdout_error(_ctgen_to_full_stdout(["--json", "sample", "--n", 2, "-m", model, "--per-file", "new/sub"],
                                        workdir, fast_path))
    assert files_under(workdir) == [] and list(workdir.iterdir()) == []  # the folders it made are gone too


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_forced_run_puts_the_old_file_back(model, workdir):
    (workdir / "keep.png").write_bytes(b"the earlier picture")
    _stdout_error(_ctgen_to_full_stdout(["--json", "--force", "sample", "--n", 1, "-m", model, "--out", "keep.png"],
                                        workdir))
    assert (workdir / "keep.png").read_bytes() == b"the earlier picture"
    assert files_under(workdir) == ["keep.png"]


def test_a_later_file_that_fails_takes_back_the_earlier_ones(model, workdir, monkeypatch):
    import ctgen.io.writers as writers_module

    (workdir / "grid.png").write_bytes(b"not ours")  # the grid is saved last, after the per-file images
    monkeypatch.setattr(writers_module, "check_targets", lambda paths, force: None)  # as if it appeared after the check
    result = invoke("sample", "--n", 4, "-m", model, "--per-file", "each", "--out", "grid.png")
    one_error_line(result, "grid.png", "already exists")
    assert files_under(workdir) == ["grid.png"] and not (workdir / "each").exists()


def test_an_exception_anywhere_takes_the_outputs_back(model, workdir, monkeypatch):
    import ctgen.cli.run as run_module

    def broken_finish(self, **extra):
        raise RuntimeError("a bug after the files were written")

    monkeypatch.setattr(run_module.Run, "finish", broken_finish)
    result = invoke("sample", "--n", 2, "-m", model, "--per-file", "each", "--out", "s.npy", "--quiet")
    one_error_line(result, "internal error", "RuntimeError")
    assert list(workdir.iterdir()) == []
