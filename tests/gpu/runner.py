"""Process plumbing of the acceptance run: the budget clock, child processes, nvidia-smi sampling."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


class Clock:
    """Seconds since the start and seconds left of the budget."""

    def __init__(self, budget_s: float):
        self.started = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()


class GpuMonitor(threading.Thread):
    """nvidia-smi sampled once a second, each sample tagged with the stage that was running."""

    QUERY = "utilization.gpu,memory.used,memory.total,power.draw"

    def __init__(self, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.available = shutil.which("nvidia-smi") is not None
        self.stage = "start"
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while self.available and not self._halt.wait(self.interval_s):
            try:
                line = subprocess.run(["nvidia-smi", f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
                util, used, total, power = (float(v) if v.strip() not in ("[N/A]", "N/A") else None
                                            for v in line.split(","))  # fmt: skip
            except (subprocess.SubprocessError, OSError, IndexError, ValueError):
                continue
            self.samples.append({"t_s": round(time.monotonic() - self._t0, 1), "stage": self.stage,
                                 "util_pct": util, "memory_used_mib": used, "memory_total_mib": total,
                                 "power_w": power})  # fmt: skip

    def stop(self) -> None:
        self._halt.set()

    def summary(self, prefix: str) -> dict[str, Any] | None:
        rows = [s for s in self.samples if s["stage"] == prefix or s["stage"].startswith(prefix + "/")]
        if not self.available or not rows:
            return None
        utils = [s["util_pct"] for s in rows if s["util_pct"] is not None]
        memory = [s["memory_used_mib"] for s in rows if s["memory_used_mib"] is not None]
        power = [s["power_w"] for s in rows if s["power_w"] is not None]
        return {"samples": len(rows), "util_mean_pct": round(sum(utils) / len(utils), 1) if utils else None,
                "util_max_pct": max(utils, default=None), "memory_max_mib": max(memory, default=None),
                "power_mean_w": round(sum(power) / len(power), 1) if power else None}  # fmt: skip

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["t_s", "stage", "util_pct", "memory_used_mib",
                                                        "memory_total_mib", "power_w"])  # fmt: skip
            writer.writeheader()
            writer.writerows(self.samples)


class Processes:
    """Child processes, each in its own process group (same session): ending one ends all it started."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.children: list[subprocess.Popen] = []

    def start(self, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        stream = open(log, "w")
        # own process group (same session): a timeout ends the child and everything it started
        process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                   process_group=0)  # fmt: skip
        stream.close()
        self.children.append(process)
        return process

    def end(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def call(self, command: list[str], log: Path, timeout_s: float, env: dict[str, str]) -> int:
        """Run to the end or to ``timeout_s`` (then ended, and TimeoutError raised); returns the exit code."""
        process = self.start(command, log, env)
        try:
            return process.wait(max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            self.end(process)
            raise TimeoutError(f"ended after {timeout_s:.0f} s (time budget); log tail: {tail(log, 400)}") from None

    def end_all(self) -> None:
        for process in self.children:
            self.end(process)


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file ("" when there is none)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
