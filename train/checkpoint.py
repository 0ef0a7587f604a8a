"""Checkpoints that prove their integrity, and a run folder that a kill at any moment cannot leave broken.

Every checkpoint ``X.pt`` has a sidecar ``X.pt.sha256.json``: {"file", "sha256", "bytes",
"previous_sha256"}. The sidecar is written first, then the checkpoint is renamed into place, so at every
instant the file on disk has either the sidecar's digest or its ``previous_sha256`` (the file it replaces).
A file with neither digest is damaged, and ``load_checkpoint_verified`` says so in one line. Checkpoints
without a sidecar (written before sidecars existed) load unverified.

One epoch's files form a unit whose commit point is ``checkpoint_last.pt``. It carries the metrics of
every epoch so far ("history") and the best epoch, so ``repair_run`` re-derives what comes after it:
``checkpoint_best.pt`` (a byte copy of the last checkpoint of the best epoch) and ``metrics.jsonl``.
Order per epoch: last, then best, then the metrics line; a kill anywhere is repaired on ``--resume``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ctgen.io.atomic import atomic_file
from ctgen.runtime.card import sha256_file
from ctgen.errors import ModelError, OutputError

__all__ = [
    "FORMAT",
    "LAST",
    "BEST",
    "METRICS",
    "digest_path",
    "load_checkpoint_verified",
    "lock_run",
    "remove_stale_files",
    "repair_run",
    "save_checkpoint",
    "copy_checkpoint",
    "verify_checkpoint",
    "write_epoch",
]

FORMAT = "ctgen-train-checkpoint"
LAST, BEST, METRICS = "checkpoint_last.pt", "checkpoint_best.pt", "metrics.jsonl"
DIGEST_SUFFIX = ".sha256.json"
# temporary files of ctgen.io.atomic (".name.PID.HEX.tmp") and of earlier versions of the loop (".name.tmp-PID")
STALE = re.compile(r"^\..+(\.tmp|\.tmp-\d+)$")


def digest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, force=True) as handle:  # fsynced before it is renamed into place
        handle.write(data)


def _write_verified(path: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    previous = sha256_file(path) if path.is_file() else None
    record = {"file": path.name, "sha256": digest, "bytes": len(data), "previous_sha256": previous}
    _write_bytes(digest_path(path), (json.dumps(record, indent=1) + "\n").encode())
    _write_bytes(path, data)
    return digest


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> str:
    """torch.save ``state`` to ``path`` with its sidecar, each renamed into place; returns the sha256.

    Raises OutputError when the folder cannot be written.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return _write_verified(Path(path), buffer.getvalue())


def copy_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> str:
    """Copy a verified checkpoint's bytes to ``target`` (with its own sidecar); returns the sha256."""
    source, target = Path(source), Path(target)
    data = source.read_bytes()
    _check_digest(source, hashlib.sha256(data).hexdigest(), len(data))
    return _write_verified(target, data)


def write_epoch(run: str | os.PathLike, state: dict[str, Any], *, is_best: bool) -> None:
    """One epoch's unit: checkpoint_last.pt (the commit point), checkpoint_best.pt when ``is_best``, then
    the metrics line (``state["metrics"]``). A kill between them is repaired by ``repair_run``."""
    run = Path(run)
    save_checkpoint(state, run / LAST)
    if is_best:
        copy_checkpoint(run / LAST, run / BEST)
    try:
        with open(run / METRICS, "a") as log:
            log.write(json.dumps(state["metrics"]) + "\n")
    except OSError as exc:
        raise OutputError(run / METRICS, exc.strerror or str(exc)) from None


def _recorded(path: Path) -> dict[str, Any] | None:
    sidecar = digest_path(path)
    if not sidecar.exists():
        return None
    try:
        record = json.loads(sidecar.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ValueError("no sha256")
    except (OSError, ValueError) as exc:
        raise ModelError(sidecar, f"unreadable checksum file ({exc.__class__.__name__})") from None
    return record


def _check_digest(path: Path, digest: str, size: int) -> None:
    record = _recorded(path)
    if record is None:
        return
    if digest not in (record["sha256"], record.get("previous_sha256")):
        expected = record.get("bytes")
        detail = f"{size} bytes, {expected} expected" if expected not in (None, size) else "content changed"
        raise ModelError(path, f"damaged: sha256 differs from {digest_path(path).name} ({detail})")


def verify_checkpoint(path: str | os.PathLike) -> str:
    """The file's sha256 after checking it against its sidecar. Raises ModelError (missing, empty, damaged)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except FileNotFoundError:
        raise ModelError(path, "missing") from None
    except OSError as exc:
        raise ModelError(path, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise ModelError(path, "empty file (0 bytes): not a checkpoint")
    _check_digest(path, digest, size)
    return digest


def _load_reason(exc: Exception) -> str:
    text = str(exc)
    for line in text.splitlines():  # weights_only refusals bury the reason below a long preamble
        if "WeightsUnpickler error:" in line:
            return line.split("error:", 1)[1].strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), exc.__class__.__name__)
    return first[:200]


def load_checkpoint_verified(path: str | os.PathLike, *, keys: tuple[str, ...] = ("config", "model")) -> dict[str, Any]:
    """Verify ``path`` against its sidecar, then ``torch.load(weights_only=True)`` it onto the CPU.

    Returns the checkpoint dict, which holds every name in ``keys``. Raises ModelError with a one-line
    reason: missing, empty, damaged (digest), unreadable (truncated, not a zip) or lacking keys.
    """
    path = Path(path)
    verify_checkpoint(path)
    try:
        # TorchVersion is a str subclass that checkpoints pick up from torch.__version__
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(path, f"cannot be loaded as a checkpoint ({_load_reason(exc)})") from None
    missing = [key for key in keys if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ModelError(path, f"not a training checkpoint (lacks {', '.join(missing)})")
    return checkpoint


def remove_stale_files(run: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed writers left in ``run`` (call with the run lock held)."""
    removed = []
    for path in Path(run).iterdir():
        if STALE.match(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def lock_run(run: str | os.PathLike):
    """Hold an exclusive lock on the run folder (POSIX); OutputError when another process holds it. The lock
    file ``.lock`` is removed when the block ends without an exception."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process per run folder is the user's promise
        yield
        return
    path = Path(run) / ".lock"
    while True:
        try:
            handle = open(path, "a")
        except OSError as exc:
            raise OutputError(path, f"cannot be created ({exc.strerror or exc})") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputError(run, "another training process is using this run folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # a finishing run removed the file we opened: lock the one now there
    try:
        yield
        path.unlink(missing_ok=True)  # a clean finish leaves no lock file behind (still held while removed)
    finally:
        handle.close()


def _epoch(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return float("inf")


def repair_run(run: str | os.PathLike, checkpoint: dict[str, Any], start_epoch: int) -> list[str]:
    """Bring best checkpoint and metrics.jsonl in line with the last checkpoint (the commit point).

    ``checkpoint`` is the loaded ``checkpoint_last.pt``. Returns what was repaired, for the console.
    """
    run = Path(run)
    repaired = []
    history = checkpoint.get("history")
    metrics_path = run / METRICS
    if history is not None:
        text = "".join(json.dumps(record) + "\n" for record in history)
    elif metrics_path.exists():  # a checkpoint from before "history": keep the lines up to its epoch
        text = "".join(line + "\n" for line in metrics_path.read_text().splitlines() if _epoch(line) <= start_epoch)
    else:
        text = ""
    if not metrics_path.exists() or metrics_path.read_text() != text:
        with atomic_file(metrics_path, force=True, mode="w") as handle:
            handle.write(text)
        repaired.append(METRICS)
    best_epoch = checkpoint.get("best_epoch")
    if best_epoch is not None and best_epoch == checkpoint.get("epoch"):
        last, best = run / LAST, run / BEST
        last_digest = verify_checkpoint(last)
        try:
            best_digest = verify_checkpoint(best)
        except ModelError:
            best_digest = None
        if best_digest != last_digest:
            copy_checkpoint(last, best)
            repaired.append(BEST)
    return repaired
