"""train.train / python -m train / studies.sweep on a tiny study: loss falls, exact resume, run files, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from ctgen.errors import OutputError  # noqa: E402
from tests.test_train_data import write_synthetic_study  # noqa: E402
from train.model import BetaVAE  # noqa: E402
from train.train import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A 4-patient phantom study when train.phantom can make one, else synthetic heads."""
    out = tmp_path_factory.mktemp("study")
    try:
        from train.phantom import generate_study
    except ImportError:
        return write_synthetic_study(out, patients=4, slices=6)
    generate_study(out, patients=4, slices=6, seed=0, workers=1, contact_sheet=False)
    return out


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def tiny(study: Path, cache_root: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        data=[str(study)], out=str(out), cache=str(cache_root), image_size=64, width=8, latent=8, beta=1.0,
        epochs=2, batch_size=6, lr=3e-3, seed=0, workers=1, quiet=True, tensorboard=False,
    )  # fmt: skip
    return replace(base, **changes)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls(study, cache_root, tmp_path):
    train(tiny(study, cache_root, tmp_path / "run", epochs=4))
    logged = metrics(tmp_path / "run")
    assert [m["epoch"] for m in logged] == [1, 2, 3, 4]
    assert logged[-1]["train_loss"] < 0.8 * logged[0]["train_loss"]
    assert logged[-1]["val_loss"] < logged[0]["val_loss"]
    assert len(logged[-1]["kl_per_unit"]) == 8 and 0 <= logged[-1]["active_units"] <= 8


def test_resume_equals_uninterrupted_run_bitwise(study, cache_root, tmp_path):
    train(tiny(study, cache_root, tmp_path / "straight", epochs=3))
    train(tiny(study, cache_root, tmp_path / "resumed", epochs=1))
    train(tiny(study, cache_root, tmp_path / "resumed", epochs=3, resume=True))
    straight = torch.load(tmp_path / "straight" / "checkpoint_last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 3 and straight["step"] == resumed["step"]
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for index, state in straight["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][key])
    assert [m["train_loss"] for m in metrics(tmp_path / "straight")] == [
        m["train_loss"] for m in metrics(tmp_path / "resumed")
    ]


def test_run_folder_and_checkpoint(study, cache_root, tmp_path):
    run = tmp_path / "run"
    train(tiny(study, cache_root, run, capacity_max=5.0, capacity_steps=4, gamma=10.0), command="python -m train x")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "config.json", "split.json", "command.txt",
                 "recon_epoch001.png", "samples_epoch002.png"):  # fmt: skip
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train_patients"]) & set(split["val_patients"])
    assert len(split["train_patients"]) == 3 and len(split["val_patients"]) == 1

    checkpoint = torch.load(run / "checkpoint_best.pt", weights_only=True)
    assert checkpoint["grid"] == {"image_size": 64, "spacing_mm": 3.75, "window_hu": [-50.0, 250.0]}
    assert checkpoint["data"]["patients"] == 4 and checkpoint["data"]["split"]["val_patients"] == 1
    assert set(checkpoint["split"]["val_patients"]) == set(split["val_patients"])
    assert checkpoint["command"] == "python -m train x"
    assert checkpoint["loss"]["capacity"] == {"max_nats": 5.0, "steps": 4, "gamma": 10.0}
    assert "recon_mae_hu" in checkpoint["metrics"] and len(checkpoint["metrics"]["units_by_kl"]) == 8
    model = BetaVAE.from_checkpoint(run / "checkpoint_best.pt")
    assert model.decode(torch.zeros(1, 8)).shape == (1, 1, 64, 64)

    logged = metrics(run)
    assert [m["capacity"] for m in logged] == [5.0 * min(1.0, m["step"] / 4) for m in logged]

    with pytest.raises(OutputError):
        train(tiny(study, cache_root, run))
    train(tiny(study, cache_root, run, epochs=1, force=True))
    assert len(metrics(run)) == 1 and not (run / "recon_epoch002.png").exists()


def test_brain_filter_drops_slices(study, cache_root, tmp_path):
    full = train(tiny(study, cache_root, tmp_path / "all", epochs=1))
    from train.data import build_cache
    from ctgen.preprocess import Grid

    fractions = build_cache([study], cache_root, Grid(size=64, spacing_mm=3.75)).brain_fractions
    threshold = float(sorted(fractions)[len(fractions) // 2])
    train(tiny(study, cache_root, tmp_path / "brain", epochs=1, filter_brain=True, brain_threshold=threshold))
    summary = torch.load(tmp_path / "brain" / "checkpoint_last.pt", weights_only=True)["data"]
    kept = summary["split"]["train_slices"] + summary["split"]["val_slices"]
    assert 0 < kept < summary["slices"] and full["metrics"]["epoch"] == 1


def test_command_line_writes_tensorboard_events(study, cache_root, tmp_path):
    from train.__main__ import main

    run = tmp_path / "cli"
    argv = ["--data", str(study), "--out", str(run), "--cache", str(cache_root), "--image-size", "64",
            "--width", "8", "--latent", "8", "--epochs", "1", "--batch-size", "6", "--quiet",
            "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    assert list(run.glob("events.out.tfevents.*"))
    assert json.loads((run / "config.json").read_text())["command"].startswith("python -m train --data")
    assert main(argv) == 1  # the run exists: one-line error, no traceback
    assert main(["--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0  # data etc. from the checkpoint
    assert [m["epoch"] for m in metrics(run)] == [1, 2]


def test_sweep_table(study, cache_root, tmp_path):
    from studies.sweep import COLUMNS, run_sweep

    rows = run_sweep(tiny(study, cache_root, tmp_path / "sweep", epochs=1), [4, 8], [1.0, 20.0])
    assert [(row["latent"], row["beta"]) for row in rows] == [(4, 1.0), (4, 20.0), (8, 1.0), (8, 20.0)]
    table = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert table[0].split(",") == COLUMNS and len(table) == 5
    assert "| latent |" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert (tmp_path / "sweep" / "latent8_beta20" / "checkpoint_best.pt").is_file()


def test_torchrun_two_cpu_processes(study, cache_root, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "train", "--data", str(study), "--out", str(run), "--cache", str(cache_root),
               "--image-size", "64", "--width", "8", "--latent", "8", "--epochs", "2", "--batch-size", "6",
               "--device", "cpu", "--quiet", "--no-tensorboard", "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["command"].startswith("torchrun --nproc_per_node=2 -m train")
    logged = metrics(run)
    assert [m["epoch"] for m in logged] == [1, 2]  # one writer
    assert all(m["train_loss"] == m["train_loss"] for m in logged)  # finite
    checkpoint = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["step"] == 2 * (18 // 6)
