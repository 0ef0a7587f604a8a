"""train.checkpoint: sha256 sidecars, one-line errors for damaged files, the kill windows, repair, locks."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from ctgen.errors import ModelError, OutputError  # noqa: E402
from train import checkpoint as ckpt  # noqa: E402
from train.checkpoint import (  # noqa: E402
    BEST,
    LAST,
    METRICS,
    digest_path,
    load_checkpoint_verified,
    lock_run,
    remove_stale_files,
    repair_run,
    save_checkpoint,
    verify_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def state(epoch: int, *, best_epoch: int | None = None, size: int = 4096) -> dict:
    """A checkpoint-shaped dict, large enough that a flipped 4 KB block lands in tensor data."""
    generator = torch.Generator().manual_seed(epoch)
    history = [{"epoch": e, "train_loss": 10.0 - e} for e in range(1, epoch + 1)]
    return {"format": ckpt.FORMAT, "config": {"latent_size": 4}, "model": {"w": torch.randn(size, generator=generator)},
            "epoch": epoch, "best_epoch": best_epoch or epoch, "metrics": history[-1], "history": history}  # fmt: skip


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit-flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 4096]) + data[middle + 4096 :])
    elif how == "wrong digest":
        record = json.loads(digest_path(path).read_text())
        record["sha256"] = record["previous_sha256"] = "0" * 64
        digest_path(path).write_text(json.dumps(record))
    elif how == "not a zip":
        path.write_text("this is not a checkpoint\n" * 100)
    elif how == "empty":
        path.write_bytes(b"")


def test_save_writes_sidecar_and_loads_verified(tmp_path):
    path = tmp_path / LAST
    digest = save_checkpoint(state(1), path)
    record = json.loads(digest_path(path).read_text())
    assert record == {"file": LAST, "sha256": digest, "bytes": path.stat().st_size, "previous_sha256": None}
    assert verify_checkpoint(path) == digest
    loaded = load_checkpoint_verified(path)
    assert torch.equal(loaded["model"]["w"], state(1)["model"]["w"])
    save_checkpoint(state(2), path)
    assert json.loads(digest_path(path).read_text())["previous_sha256"] == digest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "wrong digest", "not a zip", "empty"])
def test_damaged_checkpoint_is_one_line_model_error(tmp_path, how):
    path = tmp_path / LAST
    save_checkpoint(state(1, size=50_000), path)
    damage(path, how)
    with pytest.raises(ModelError) as info:
        load_checkpoint_verified(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ") and "\n" not in message and len(message) < 400
    assert ("empty" if how == "empty" else "damaged") in message


def test_without_sidecar_loads_unverified_and_still_fails_in_one_line(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(state(1), path)  # a checkpoint from before sidecars
    assert load_checkpoint_verified(path)["epoch"] == 1
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot be loaded as a checkpoint"):
        load_checkpoint_verified(path)
    torch.save({"model": {}}, path)
    with pytest.raises(ModelError, match="lacks config"):
        load_checkpoint_verified(path)
    digest_path(path).write_text("{not json")
    with pytest.raises(ModelError, match="unreadable checksum file"):
        load_checkpoint_verified(path)


class Killed(BaseException):
    """Stands for SIGKILL at one point of a write (on-disk state as a kill leaves it)."""


def test_kill_between_sidecar_and_rename_keeps_the_old_checkpoint_valid(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_checkpoint(state(1), path)
    real = ckpt._write_bytes

    def write_sidecar_then_die(target, data):
        if target == path:
            raise Killed
        real(target, data)

    monkeypatch.setattr(ckpt, "_write_bytes", write_sidecar_then_die)
    with pytest.raises(Killed):
        save_checkpoint(state(2), path)
    monkeypatch.undo()
    record = json.loads(digest_path(path).read_text())
    assert record["sha256"] != record["previous_sha256"]  # the sidecar describes epoch 2 ...
    assert load_checkpoint_verified(path)["epoch"] == 1  # ... the file is epoch 1 and still valid
    save_checkpoint(state(3), path)  # the next save records the digest that was really on disk
    assert load_checkpoint_verified(path)["epoch"] == 3


def test_repair_rebuilds_best_and_metrics_from_last(tmp_path):
    # the reproduction of issue 15 item 8: killed after checkpoint_last.pt of epoch 2, before best and metrics
    save_checkpoint(state(1), tmp_path / LAST)
    ckpt.copy_checkpoint(tmp_path / LAST, tmp_path / BEST)
    (tmp_path / METRICS).write_text(json.dumps(state(1)["history"][0]) + "\n")
    save_checkpoint(state(2), tmp_path / LAST)
    with (tmp_path / METRICS).open("a") as log:
        log.write('{"epoch": 2, "train_lo')  # a line cut short
    last = load_checkpoint_verified(tmp_path / LAST)
    assert repair_run(tmp_path, last, last["epoch"]) == [METRICS, BEST]
    assert load_checkpoint_verified(tmp_path / BEST)["epoch"] == 2
    assert verify_checkpoint(tmp_path / BEST) == verify_checkpoint(tmp_path / LAST)
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert lines == state(2)["history"]
    assert repair_run(tmp_path, last, last["epoch"]) == []  # idempotent


def test_repair_keeps_an_older_best(tmp_path):
    save_checkpoint(state(1), tmp_path / LAST)
    ckpt.copy_checkpoint(tmp_path / LAST, tmp_path / BEST)
    save_checkpoint(state(2, best_epoch=1), tmp_path / LAST)
    last = load_checkpoint_verified(tmp_path / LAST)
    assert repair_run(tmp_path, last, 2) == [METRICS]
    assert load_checkpoint_verified(tmp_path / BEST)["epoch"] == 1


def test_stale_temporary_files_are_removed(tmp_path):
    # issue 15 item 9: the staging file of a killed writer
    names = [".checkpoint_last.pt.tmp-4242", ".checkpoint_last.pt.4242.a1b2c3d4.tmp", ".metrics.jsonl.77.00ff00ff.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    for name in (LAST, ".lock", "recon_epoch001.png"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in remove_stale_files(tmp_path)) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAST, ".lock", "recon_epoch001.png"])


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX")
def test_run_lock_is_exclusive(tmp_path):
    with lock_run(tmp_path):
        with pytest.raises(OutputError, match="another training process"):
            with lock_run(tmp_path):
                pass
    with lock_run(tmp_path):  # released
        pass


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX")
def test_run_lock_file_is_removed_after_a_clean_finish_only(tmp_path):
    # issue 24 item 10: runs/NAME/.lock stayed behind
    with lock_run(tmp_path):
        assert (tmp_path / ".lock").is_file()
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(RuntimeError), lock_run(tmp_path):
        raise RuntimeError("training failed")
    assert (tmp_path / ".lock").is_file()  # a failed run keeps it, as a crash would


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX")
def test_run_lock_follows_a_lock_file_replaced_while_waiting(tmp_path, monkeypatch):
    """A process that opened .lock just before a finishing run removed it locks the new file, not the orphan."""
    import fcntl

    path = tmp_path / ".lock"
    calls = []
    flock = fcntl.flock

    def flock_after_removal(fd, operation):
        if not calls:  # the first attempt: the file we opened is removed and another process makes a new one
            path.unlink()
            path.write_text("")
        calls.append(fd)
        return flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    with lock_run(tmp_path):
        assert len(calls) == 2
