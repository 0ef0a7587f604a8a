"""train.train / python -m train / studies.sweep on a tiny study: loss falls, exact resume (every objective),
run files, DDP, bf16, NaN stops, damaged checkpoints, kills at any moment repaired by --resume."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from ctgen.errors import InputError, ModelError, OutputError  # noqa: E402
from ctgen.images.preprocess import CT_MAP, Grid  # noqa: E402
from tests.test_train_data import write_synthetic_study  # noqa: E402
from train.checkpoint import load_checkpoint_verified  # noqa: E402
from train.model import BetaVAE  # noqa: E402
from train.train import TrainConfig, TrainingDiverged, train  # noqa: E402

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
    assert checkpoint["grid"] == Grid(size=64, spacing_mm=3.75, hu_map=CT_MAP).to_card()  # the default HU map
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
    from ctgen.images.preprocess import Grid

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


def test_command_line_names_the_run_and_the_export_command(study, tmp_path, capsys, monkeypatch):
    # issue 24 item 10: silent about what comes next, about the cache folder it creates, and the .lock left behind
    import shlex

    from export.__main__ import main as export_main
    from train.__main__ import main

    monkeypatch.chdir(tmp_path)
    argv = ["--data", str(study), "--out", "runs/first", "--image-size", "64", "--width", "8", "--latent", "8",
            "--epochs", "1", "--batch-size", "6", "--quiet", "--workers", "1", "--no-tensorboard"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["run: runs/first", "next: python -m export runs/first --out models/first"]
    assert [line for line in err.splitlines() if "cache folder" in line] == [
        f"creating the slice cache folder cache{os.sep} (shared by later runs; --cache moves it)"]
    assert (tmp_path / "cache").is_dir() and not (tmp_path / "runs" / "first" / ".lock").exists()

    assert main([*argv[:3], "runs/second", *argv[4:]]) == 0
    out, err = capsys.readouterr()
    assert "cache folder" not in err and out.splitlines()[0] == "run: runs/second"  # the folder exists: said once
    export = shlex.split(out.splitlines()[1].removeprefix("next: "))[3:]  # the export command runs as printed
    assert export_main(export) == 0 and (tmp_path / "models" / "second" / "model.json").is_file()


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
    torchrun(["-m", "train", "--data", str(study), "--out", str(run), "--cache", str(cache_root),
              "--image-size", "64", "--width", "8", "--latent", "8", "--epochs", "2", "--batch-size", "6",
              "--device", "cpu", "--quiet", "--no-tensorboard", "--workers", "1"], tmp_path)  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["command"].startswith("torchrun --nproc_per_node=2 -m train")
    logged = metrics(run)
    assert [m["epoch"] for m in logged] == [1, 2]  # one writer
    assert all(m["train_loss"] == m["train_loss"] for m in logged)  # finite
    checkpoint = torch.load(run / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["step"] == 2 * (18 // 6)


# ------------------------------------------------------------------ objectives: resume, bf16, DDP
TIMING = {"images_per_s", "train_seconds", "train_cpu_seconds", "seconds"}


def deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records]


def assert_same_state(first: dict, second: dict) -> None:
    assert first["epoch"] == second["epoch"] and first["step"] == second["step"]
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    for index, state in first["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][index][key])


def straight_and_resumed(study: Path, cache_root: Path, tmp_path: Path, **changes) -> tuple[dict, dict]:
    """The last checkpoints of 2 epochs straight and of 1 epoch + --resume to 2, asserted equal in model and
    optimizer."""
    train(tiny(study, cache_root, tmp_path / "straight", **changes))
    train(tiny(study, cache_root, tmp_path / "resumed", epochs=1, **changes))
    train(tiny(study, cache_root, tmp_path / "resumed", resume=True))
    straight = torch.load(tmp_path / "straight" / "checkpoint_last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)
    assert_same_state(straight, resumed)
    return straight, resumed


@pytest.mark.parametrize("objective", ["tcvae", "factorvae", "pairs"])
def test_resume_is_exact_for_every_objective(study, cache_root, tmp_path, objective):
    changes = {"objective": objective, "factor_hidden": 32}
    straight, resumed = straight_and_resumed(study, cache_root, tmp_path, **changes)
    assert straight["loss"]["objective"] == resumed["train"]["objective"] == objective
    if objective == "factorvae":
        for part in ("discriminator", "optimizer"):
            first, second = straight["objective_state"][part], resumed["objective_state"][part]
            if part == "optimizer":
                first, second = first["state"][0], second["state"][0]
            for key, value in first.items():
                assert torch.equal(value, second[key]), (part, key)
    assert deterministic(metrics(tmp_path / "straight")) == deterministic(metrics(tmp_path / "resumed"))
    extras = {"tcvae": ["train_mi", "train_tc", "train_dim_kl", "val_mi", "val_tc", "val_dim_kl"],
              "factorvae": ["train_tc", "train_discriminator", "val_tc"], "pairs": ["train_shared_units"]}[objective]
    assert all(name in metrics(tmp_path / "straight")[-1] for name in extras)


@pytest.mark.parametrize("objective", ["betavae", "tcvae", "factorvae", "pairs"])
def test_bf16_autocast_for_every_objective(study, cache_root, tmp_path, objective):
    summary = train(tiny(study, cache_root, tmp_path / "run", epochs=1, precision="bf16", objective=objective,
                         factor_hidden=32))  # fmt: skip
    assert all(math.isfinite(summary["metrics"][key]) for key in ("train_loss", "val_loss", "val_kl"))


def test_capacity_annealing_is_betavae_only(study, cache_root, tmp_path):
    with pytest.raises(InputError, match="betavae only"):
        train(tiny(study, cache_root, tmp_path / "run", objective="tcvae", capacity_max=5.0))


_DDP_OBJECTIVES = r"""
import sys
from pathlib import Path

import torch

from train import ddp
from train.losses import ImageLoss
from train.objectives import FactorVAE
from train.train import TrainConfig, train

study, cache, out = map(Path, sys.argv[1:4])
trained = []
original = FactorVAE.train_discriminator


def spy(self, codes, generator=None):
    trained.append(self)
    return original(self, codes, generator)


FactorVAE.train_discriminator = spy
for objective in ("tcvae", "factorvae", "pairs"):
    train(TrainConfig(data=[str(study)], out=str(out / objective), cache=str(cache), image_size=64, width=8, latent=8,
                      epochs=1, batch_size=6, device="cpu", quiet=True, tensorboard=False, workers=1,
                      objective=objective, factor_hidden=32))
torch.save(trained[-1].discriminator.state_dict(), out / f"discriminator{ddp.init('cpu').rank}.pt")
patches = []
original_after = ImageLoss.after_step


def keep(self, extra):
    patches.append(self)
    return original_after(self, extra)


ImageLoss.after_step = keep
train(TrainConfig(data=[str(study)], out=str(out / "images"), cache=str(cache), image_size=64, width=8, latent=8,
                  epochs=1, batch_size=6, device="cpu", quiet=True, tensorboard=False, workers=1, recon="l1",
                  ssim_weight=0.1, freq_weight=1.0, adv_weight=0.01, adv_start=1))
torch.save(patches[-1].discriminator.state_dict(), out / f"patch{ddp.init('cpu').rank}.pt")
ddp.shutdown()
"""


def torchrun(arguments: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *arguments]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]


def test_torchrun_every_objective(study, cache_root, tmp_path):
    script = tmp_path / "objectives.py"
    script.write_text(_DDP_OBJECTIVES)
    torchrun([str(script), str(study), str(cache_root), str(tmp_path)], tmp_path)
    for objective in ("tcvae", "factorvae", "pairs"):
        (logged,) = metrics(tmp_path / objective)
        assert math.isfinite(logged["train_loss"]) and math.isfinite(logged["val_loss"])
        checkpoint = torch.load(tmp_path / objective / "checkpoint_last.pt", weights_only=True)
        assert checkpoint["loss"]["objective"] == objective
        # pairs: a batch of 6 images is 3 pairs, an epoch every pairable slice once as the first of a pair
        assert checkpoint["step"] == (18 // 3 if objective == "pairs" else 18 // 6)
    first, second = (torch.load(tmp_path / f"discriminator{rank}.pt", weights_only=True) for rank in (0, 1))
    for name, tensor in first.items():  # the discriminator sits outside DDP: its gradients are averaged by hand
        assert torch.equal(tensor, second[name]), name
    (logged,) = metrics(tmp_path / "images")  # the image terms under DDP: the patch discriminator too
    assert math.isfinite(logged["train_loss"]) and logged["train_adv_discriminator"] > 0
    first, second = (torch.load(tmp_path / f"patch{rank}.pt", weights_only=True) for rank in (0, 1))
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


# ------------------------------------------------------------------ NaN, damaged checkpoints, kills
def test_nan_loss_stops_at_once_and_keeps_the_last_good_checkpoint(study, cache_root, tmp_path, monkeypatch, capsys):
    from train.objectives import Objective

    original = Objective.loss

    def poisoned(self, model, images, noise, *, step, labels=None, generator=None):
        terms = original(self, model, images, noise, step=step, labels=labels, generator=generator)
        if step == 4:  # epoch 2 of 3 steps each
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(Objective, "loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 5.*checkpoint_last.pt \(epoch 1\)"):
        train(tiny(study, cache_root, run, epochs=3))
    assert [m["epoch"] for m in metrics(run)] == [1]
    assert load_checkpoint_verified(run / "checkpoint_last.pt")["epoch"] == 1
    assert load_checkpoint_verified(run / "checkpoint_best.pt")["epoch"] == 1
    assert not (run / "recon_epoch002.png").exists()

    from train.__main__ import main

    capsys.readouterr()
    assert main(["--out", str(run), "--resume", "--quiet"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {run}: the loss became nan at epoch 2")


@pytest.fixture(scope="module")
def one_epoch_run(study, cache_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    train(tiny(study, cache_root, run, epochs=1))
    return run


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "wrong digest", "not a zip", "empty"])
def test_damaged_checkpoint_stops_resume_with_one_line(one_epoch_run, tmp_path, capsys, how):
    from tests.test_train_checkpoint import damage
    from train.__main__ import main

    run = Path(shutil.copytree(one_epoch_run, tmp_path / "run"))
    damage(run / "checkpoint_last.pt", how)
    capsys.readouterr()
    assert main(["--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {run / 'checkpoint_last.pt'}: ")
    assert [m["epoch"] for m in metrics(run)] == [1]  # nothing trained on


def test_damaged_checkpoint_from_the_shell_and_in_export(one_epoch_run, tmp_path):
    from export.onnx_export import load_checkpoint
    from tests.test_train_checkpoint import damage

    run = Path(shutil.copytree(one_epoch_run, tmp_path / "run"))
    damage(run / "checkpoint_last.pt", "bit-flipped")
    damage(run / "checkpoint_best.pt", "bit-flipped")
    result = subprocess.run([sys.executable, "-m", "train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "checkpoint_last.pt: damaged: sha256 differs" in result.stderr
    with pytest.raises(ModelError, match="checkpoint_best.pt: damaged"):
        load_checkpoint(run / "checkpoint_best.pt")


class Killed(BaseException):
    """Stands for SIGKILL at one point of the epoch's writes (the files as a kill leaves them)."""


@pytest.fixture(scope="module")
def straight_run(study, cache_root, tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted run that killed and resumed runs must equal, and how long its epochs took (from
    config.json, written when the data is loaded, to the end)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny(study, cache_root, run, epochs=3))
    return run, time.time() - (run / "config.json").stat().st_mtime


def assert_equals_straight(run: Path, straight: Path) -> None:
    from train.checkpoint import STALE

    assert deterministic(metrics(run)) == deterministic(metrics(straight))
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        assert_same_state(load_checkpoint_verified(straight / name), load_checkpoint_verified(run / name))
    best = min(metrics(run), key=lambda m: m["val_loss"])["epoch"]
    assert load_checkpoint_verified(run / "checkpoint_best.pt")["epoch"] == best
    assert [p.name for p in run.iterdir() if STALE.match(p.name)] == []


@pytest.mark.parametrize("window", ["after the sidecar of last", "after last", "after best"])
def test_kill_inside_the_epoch_writes_is_repaired_on_resume(study, cache_root, straight_run, tmp_path, monkeypatch,
                                                            window):  # fmt: skip
    from train import checkpoint as ckpt

    run = tmp_path / "run"
    real_write, real_copy = ckpt._write_bytes, ckpt.copy_checkpoint
    epochs_saved = []

    def write_bytes(path, data):
        if path.name == "checkpoint_last.pt":
            epochs_saved.append(path)
            if window == "after the sidecar of last" and len(epochs_saved) == 2:
                raise Killed
        real_write(path, data)

    def copy(source, target):
        if window == "after last" and len(epochs_saved) == 2:
            raise Killed
        real_copy(source, target)
        if window == "after best" and len(epochs_saved) == 2:
            raise Killed

    monkeypatch.setattr(ckpt, "_write_bytes", write_bytes)
    monkeypatch.setattr(ckpt, "copy_checkpoint", copy)
    with pytest.raises(Killed):
        train(tiny(study, cache_root, run, epochs=3))
    monkeypatch.undo()
    (run / ".checkpoint_last.pt.tmp-4242").write_bytes(b"left by an older version")  # issue 15 item 9
    (run / ".checkpoint_last.pt.4242.0a0b0c0d.tmp").write_bytes(b"left by a kill")
    train(tiny(study, cache_root, run, epochs=3, resume=True))
    assert_equals_straight(run, straight_run[0])


def kill_and_resume(study: Path, cache_root: Path, straight: tuple[Path, float], run: Path, seed: int) -> None:
    """python -m train, SIGKILL at a random moment of its epochs, then --resume to the end."""
    from train.__main__ import main

    argv = ["--data", str(study), "--out", str(run), "--cache", str(cache_root), "--image-size", "64", "--width", "8",
            "--latent", "8", "--beta", "1", "--epochs", "3", "--batch-size", "6", "--lr", "3e-3", "--workers", "1",
            "--quiet", "--no-tensorboard"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run.parent.mkdir(parents=True)
    process = subprocess.Popen([sys.executable, "-m", "train", *argv], env=env, cwd=run.parent,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "config.json").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the epochs start once config.json is written
        time.sleep(random.Random(seed).uniform(0.0, 1.1 * straight[1]))
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert main([*argv, "--resume"]) == 0
    assert_equals_straight(run, straight[0])


def test_kill_at_random_moments_then_resume(study, cache_root, straight_run, tmp_path):
    for trial in range(2):
        kill_and_resume(study, cache_root, straight_run, tmp_path / f"trial{trial}" / "run", seed=trial)


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_many(study, cache_root, straight_run, tmp_path):
    for trial in range(20):
        kill_and_resume(study, cache_root, straight_run, tmp_path / f"trial{trial}" / "run", seed=100 + trial)


# ------------------------------------------------------------------ image terms (train.losses): resume, bf16
IMAGE_TERMS = {"recon": "l1", "ssim_weight": 0.1, "freq_weight": 1.0, "adv_weight": 0.01, "adv_start": 2}


@pytest.mark.parametrize("objective", ["betavae", "factorvae", "pairs"])
def test_resume_is_exact_with_every_image_term(study, cache_root, tmp_path, objective):
    """2 epochs straight == 1 epoch + --resume 1 epoch, with the discriminator switched on in the first."""
    changes = {"objective": objective, "factor_hidden": 32, **IMAGE_TERMS}
    straight, resumed = straight_and_resumed(study, cache_root, tmp_path, **changes)
    for name, tensor in straight["objective_state"]["patch_discriminator"].items():
        assert torch.equal(tensor, resumed["objective_state"]["patch_discriminator"][name]), name
    for key, value in straight["objective_state"]["patch_optimizer"]["state"][0].items():
        assert torch.equal(value, resumed["objective_state"]["patch_optimizer"]["state"][0][key]), key
    logged = metrics(tmp_path / "straight")
    assert deterministic(logged) == deterministic(metrics(tmp_path / "resumed"))
    assert all(f"train_{name}" in logged[-1] for name in ("ms_ssim", "freq", "adv", "adv_discriminator"))
    assert "val_ms_ssim" in logged[-1] and "val_freq" in logged[-1]
    assert logged[-1]["train_adv_discriminator"] > 0
    record = straight["loss"]["losses"]
    assert record["reconstruction"] == "l1" and record["adversarial"]["start_step"] == 2
    assert straight["train"]["ssim_weight"] == 0.1 and "absolute" in straight["loss"]["reconstruction"]


@pytest.mark.parametrize("objective", ["betavae", "tcvae"])
def test_bf16_autocast_with_every_image_term(study, cache_root, tmp_path, objective):
    summary = train(tiny(study, cache_root, tmp_path / "run", epochs=1, precision="bf16", objective=objective,
                         **{**IMAGE_TERMS, "adv_start": 0}))  # fmt: skip
    assert all(math.isfinite(summary["metrics"][key]) for key in ("train_loss", "val_loss", "train_adv"))


def test_resume_without_the_discriminator_state_is_refused(study, cache_root, tmp_path):
    train(tiny(study, cache_root, tmp_path / "run", epochs=1))
    checkpoint = load_checkpoint_verified(tmp_path / "run" / "checkpoint_last.pt")
    checkpoint["train"]["adv_weight"] = 0.01  # a run that claims a discriminator its checkpoint lacks
    from train.checkpoint import save_checkpoint

    save_checkpoint(checkpoint, tmp_path / "run" / "checkpoint_last.pt")
    with pytest.raises(ModelError, match="does not fit"):
        train(tiny(study, cache_root, tmp_path / "run", resume=True))


@pytest.mark.parametrize("upsample", ["resize", "subpixel"])
def test_decoder_upsampling_is_recorded_and_kept_on_resume(study, cache_root, tmp_path, upsample):
    train(tiny(study, cache_root, tmp_path / "run", epochs=1, upsample=upsample))
    train(tiny(study, cache_root, tmp_path / "run", resume=True))  # the option comes back from the checkpoint
    checkpoint = load_checkpoint_verified(tmp_path / "run" / "checkpoint_last.pt")
    assert checkpoint["config"]["upsample"] == checkpoint["train"]["upsample"] == upsample
    assert checkpoint["epoch"] == 2 and BetaVAE.from_checkpoint(checkpoint).config.upsample == upsample
