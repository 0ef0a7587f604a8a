"""The GPU acceptance run: one command on one H200 machine, within a time budget (default 9 minutes).

    python3 tests/gpu/acceptance.py --wheels .whl [--budget-s 540] [--out DIR]   # on the GPU machine
    python tests/gpu/acceptance.py --dry-run --out /tmp/acceptance               # the rehearsal, on a CPU
    python3 tests/gpu/acceptance.py --stage-ort .whl-ort                         # one onnxruntime-gpu part per call

Stages, in order: install the carried wheels -> a phantom study on the CPU cores and its slice cache,
beside ``pytest -m gpu`` on the GPU (then its onnxruntime-gpu tests with the staged build) -> one run
alone (probe) ->
the seed study's grid (latent 10/20/50/100/500 at β 1, β 1/20/50/200 at latent 50: eight runs, all
sharing the GPU as separate processes; two calibration epochs, then as many more as the measured epoch
time leaves room for) -> export of the β 1, latent 50 run (fp32 + fp16 graphs) -> ONNX Runtime CUDA
against CPU -> report. Each stage checks the time left and is skipped or shortened, with the reason
recorded, rather than overrun; report.json is rewritten after every stage, so a run cut short still
leaves one. The output folder (--out, default $OUT) gets report.json, samples.png, recon.png,
gpu_samples.csv and model.json; the phantom, cache and runs stay in --work.

``--dry-run`` takes the same path on the CPU at toy size (4 patients x 4 slices at 64², two grid points,
one calibration epoch and one resumed epoch; the gpu tests are not run). Both modes first print the
ESTIMATE of the GPU run (estimate.py: CPU figures measured on the development machine, scaled by stated
assumptions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import estimate as estimating  # noqa: E402
import ort_stage  # noqa: E402
from results import epoch_timing, junit, read_metrics, run_name, run_summary, summary_lines  # noqa: E402
from runner import Clock, GpuMonitor, Processes, tail  # noqa: E402

STAGES = ["install", "phantom", "cache", "gpu_tests", "probe", "training", "export", "ort_check"]
GRID = [(10, 1.0), (20, 1.0), (50, 1.0), (100, 1.0), (500, 1.0), (50, 20.0), (50, 50.0), (50, 200.0)]
EXPORT_POINT = (50, 1.0)  # shared by both sweeps; its best checkpoint (lowest validation loss) is exported
# the exported run also binds units to measured factors (with their latent cycle) and adds the image terms, so the
# GPU run exercises them
EXPORT_EXTRAS = {"bind": "rotation_deg,level,head_width_max_mm,head_length_max_mm", "upsample": "subpixel",
                 "ssim_weight": 0.1, "freq_weight": 1.0, "adv_weight": 0.01, "adv_start": 1, "cycle_weight": 0.3}
BUDGET_S = 540.0
WHEEL_SITE = Path("/tmp/ctgen-site")
PACKAGES = ["pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "python-gdcm", "nibabel", "nilearn",
            "numpy", "scipy", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "torch", "typer", "rich",
            "pillow", "pytest"]  # fmt: skip
# what must stay free behind the training in the dry run (seconds on the 2-core machine); the GPU run
# takes these from the estimate
DRY_RESERVES = {"export": 25.0, "ort_check": 8.0, "report": 2.0, "margin_s": 3.0}


@dataclass
class Plan:
    mode: str
    device: str
    patients: int
    slices: int
    image_size: int
    width: int
    batch_size: int
    points: list[tuple[int, float]]
    max_epochs: int
    calibration_epochs: int
    budget_s: float
    precision: str = "bf16"
    val_fraction: float = 0.2
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    gpu_tests: bool = True
    probe: bool = True

    @classmethod
    def gpu(cls, budget_s: float) -> Plan:
        return cls(mode="gpu", device="cuda", patients=350, slices=28, image_size=256, width=32, batch_size=64,
                   points=GRID, max_epochs=40, calibration_epochs=2, budget_s=budget_s)  # fmt: skip

    @classmethod
    def dry(cls, budget_s: float) -> Plan:
        return cls(mode="dry-run", device="cpu", patients=4, slices=4, image_size=64, width=8, batch_size=8,
                   points=[EXPORT_POINT, (50, 20.0)], max_epochs=2, calibration_epochs=1, budget_s=budget_s,
                   gpu_tests=False, probe=False)  # fmt: skip


class Skip(Exception):
    """A stage did not run; the message is the recorded reason."""


class Acceptance:
    def __init__(self, plan: Plan, estimate: dict[str, Any], out: Path, work: Path, wheels: Path | None, note: str):
        """``estimate``: the GPU run's (estimate.py); the GPU run plans its stages with it."""
        self.plan, self.estimate, self.out, self.work, self.wheels = plan, estimate, out, work, wheels
        self.clock = Clock(plan.budget_s)
        self.monitor = GpuMonitor()
        self.processes = Processes(REPO)
        self.lock = threading.Lock()  # the phantom and cache stages run in a thread beside the gpu tests
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        self.study = work / "phantom"
        self.cache = work / "cache"
        self.runs = work / "runs"
        self.model = work / "model"
        self.report: dict[str, Any] = {
            "format": "ctgen-gpu-acceptance", "format_version": 1, "mode": plan.mode, "note": note,
            "command": " ".join(["python3", *sys.argv]), "started_utc": _now(), "finished_utc": None,
            "wall_s": None, "budget_s": plan.budget_s, "within_budget": None, "plan": asdict(plan),
            "estimate": self.estimate, "environment": {}, "stages": {name: {"status": "pending"} for name in STAGES},
            "gpu": {}, "files": [], "summary": {},
        }  # fmt: skip

    # ------------------------------------------------------------------------------------ plumbing
    def say(self, text: str) -> None:
        print(f"[{self.clock.elapsed():6.1f} s] {text}", flush=True)

    def reserve_after_training(self) -> float:
        if self.plan.mode == "dry-run":
            return sum(DRY_RESERVES.values())
        stages = self.estimate["stages_s"]
        return stages["export"] + stages["ort_check"] + stages["report"] + estimating.assumption("margin_s")

    def minimum_training(self) -> float:
        """Two phase starts and the calibration epochs, as estimated (the dry run: a few seconds)."""
        if self.plan.mode == "dry-run":
            return 15.0
        starts = 2 * estimating.assumption("phase_start_s")
        return starts + self.plan.calibration_epochs * self.estimate["grid_epoch_s"]

    def stage(self, name: str, function: Callable[[dict[str, Any]], Any], *, uses_gpu: bool = True) -> Any:
        """Run one stage; its entry joins the report when it ends. ``uses_gpu``: tag the GPU samples with it."""
        entry: dict[str, Any] = {"status": "running", "started_s": round(self.clock.elapsed(), 1)}
        with self.lock:
            self.report["stages"][name] = {"status": "running", "started_s": entry["started_s"]}
        if uses_gpu:
            self.monitor.stage = name
        self.say(f"{name} ...")
        started = time.monotonic()
        value = None
        try:
            value = function(entry)
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Skip as skip:
            entry.update(status="skipped", reason=str(skip))
        except Exception as exc:  # recorded; the stages that need this one skip
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc()[-3000:])
        entry["seconds"] = round(time.monotonic() - started, 2)
        if uses_gpu:
            entry["gpu"] = self.monitor.summary(name)
            self.monitor.stage = "between"
        with self.lock:
            self.report["stages"][name] = entry
        self.write_report()
        reason = entry.get("reason") or entry.get("error") or ""
        self.say(f"{name}: {entry['status']} in {entry['seconds']:.1f} s{(': ' + reason) if reason else ''}")
        return value

    def data_stages(self) -> None:
        self.stage("phantom", self.phantom, uses_gpu=False)
        self.stage("cache", self.cache_stage, uses_gpu=False)

    def ok(self, name: str) -> bool:
        return self.report["stages"].get(name, {}).get("status") in ("ok", "shortened")

    def write_report(self) -> None:
        path = self.out / "report.json"
        with self.lock:
            self.report["gpu"] = {"nvidia_smi": self.monitor.available, "samples": len(self.monitor.samples),
                                  **(self._whole_gpu() or {})}  # fmt: skip
            staging = path.with_name(f".report.json.tmp-{threading.get_ident()}")
            staging.write_text(json.dumps(self.report, indent=1, default=str) + "\n")
            os.replace(staging, path)
            if self.monitor.available:
                self.monitor.write_csv(self.out / "gpu_samples.csv")

    def _whole_gpu(self) -> dict[str, Any] | None:
        samples = self.monitor.samples
        if not samples:
            return None
        memory = [s["memory_used_mib"] for s in samples if s["memory_used_mib"] is not None]
        return {"memory_max_mib": max(memory, default=None), "memory_total_mib": samples[-1]["memory_total_mib"]}

    # ------------------------------------------------------------------------------------ stages
    def install(self, entry: dict[str, Any]) -> None:
        if self.wheels is None:
            entry["status"] = "skipped"
            entry["reason"] = "no --wheels given: the packages come from this environment"
        else:
            wheels = sorted(self.wheels.glob("*.whl"))
            if not wheels:
                raise RuntimeError(f"{self.wheels} holds no wheels (run tests/gpu/fetch_wheels.py, carry .whl)")
            command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                       "--no-cache-dir", "--upgrade", "--target", str(WHEEL_SITE), *map(str, wheels)]  # fmt: skip
            code = self.processes.call(command, self.work / "install.log", min(120.0, self.clock.left()), self.env)
            if code != 0:
                raise RuntimeError(f"pip install failed: {tail(self.work / 'install.log', 600)}")
            entry["wheels"] = [wheel.name for wheel in wheels]
            sys.path.insert(0, str(WHEEL_SITE))
            self.env["PYTHONPATH"] = os.pathsep.join([self.env["PYTHONPATH"], str(WHEEL_SITE)])
        versions = {}
        for name in PACKAGES:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
        self.report["environment"].update(python=sys.version.split()[0], cores=os.cpu_count(), packages=versions,
                                          onnxruntime_gpu_staged=ort_stage.installed() is not None)  # fmt: skip
        missing = [name for name in ("pydicom", "nibabel", "nilearn") if versions[name] is None]
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: the phantom cannot be built (carry .whl)")

    def data_workers(self) -> int:
        """Processes for the phantom and the cache: all cores, less two for the gpu tests running beside."""
        return max(1, self.plan.cores - 2) if self.plan.gpu_tests else self.plan.cores

    def phantom(self, entry: dict[str, Any]) -> None:
        plan, est = self.plan, self.estimate["stages_s"]
        patients = plan.patients
        if plan.mode == "gpu":
            allowed = self.clock.left() - est["probe"] - self.minimum_training() - self.reserve_after_training()
            needed = est["phantom"] + est["cache"]
            if needed > allowed:
                patients = max(10, int(patients * max(allowed, 0) / needed))
                entry["status"] = "shortened"
                entry["reason"] = (f"{allowed:.0f} s left for phantom and cache, {needed:.0f} s estimated for "
                                   f"{plan.patients} patients: {patients} patients")  # fmt: skip
        plan.patients = patients
        workers = min(self.data_workers(), patients)
        started = time.monotonic()
        command = [sys.executable, "-m", "train.phantom", "--out", str(self.study), "--patients", str(patients),
                   "--slices", str(plan.slices), "--seed", "0", "--workers", str(workers), "--force"]  # fmt: skip
        timeout = self.clock.left() - self.reserve_after_training()
        code = self.processes.call(command, self.work / "phantom.log", timeout, self.env)
        if code != 0:
            raise RuntimeError(f"python -m train.phantom failed: {tail(self.work / 'phantom.log', 800)}")
        entry.update(patients=patients, slices=plan.slices, workers=workers,
                     slices_per_s=round(patients * plan.slices / (time.monotonic() - started), 1))  # fmt: skip

    def base_config(self) -> dict[str, Any]:
        plan = self.plan
        return {"data": [str(self.study)], "cache": str(self.cache), "image_size": plan.image_size, "width": plan.width,
                "batch_size": plan.batch_size, "precision": plan.precision, "device": plan.device, "seed": 0,
                "val_fraction": plan.val_fraction, "quiet": True, "tensorboard": False, "workers": 1}  # fmt: skip

    def worker(self, name: str, config: dict[str, Any], threads: int) -> tuple[subprocess.Popen, Path]:
        spec, result = self.work / f"{name}.spec.json", self.work / f"{name}.result.json"
        result.unlink(missing_ok=True)
        command = f"python3 tests/gpu/train_worker.py  # {name}"
        spec.write_text(json.dumps({"config": config, "result": str(result), "command": command}, indent=1))
        env = {**self.env, "OMP_NUM_THREADS": str(threads)}
        return self.processes.start([sys.executable, str(HERE / "train_worker.py"), str(spec)],
                                    self.work / f"{name}.log", env), result

    def cache_stage(self, entry: dict[str, Any]) -> None:
        if not self.ok("phantom"):
            raise Skip("no phantom study")
        config = self.base_config() | {"out": str(self.runs / "cache_build"), "epochs": 0, "device": "cpu",
                                       "latent": 50, "beta": 1.0, "workers": self.data_workers(),
                                       "force": True}  # fmt: skip
        process, result_path = self.worker("cache_build", config, self.data_workers())
        try:
            process.wait(max(1.0, self.clock.left() - self.reserve_after_training()))
        except subprocess.TimeoutExpired:
            self.processes.end(process)
            raise TimeoutError("cache build ended at the time budget") from None
        result = json.loads(result_path.read_text()) if result_path.is_file() else {"ok": False, "error": "no result"}
        if not result.get("ok"):
            raise RuntimeError(result.get("error", "failed") + " | " + tail(self.work / "cache_build.log", 800))
        with self.lock:
            self.report["environment"]["torch"] = result.get("environment")
        split = json.loads((self.runs / "cache_build" / "split.json").read_text())
        entry.update(train_slices=split["train_slices"], val_slices=split["val_slices"])

    def gpu_tests(self, entry: dict[str, Any]) -> None:
        if not self.plan.gpu_tests:
            raise Skip("dry run: no CUDA device, every gpu test would skip")
        needed = self.reserve_after_training() + self.minimum_training()
        ort = ort_stage.installed()
        runs = [("torch", "not ort_cuda", None, "gpu_tests_s"), ("ort_cuda", "ort_cuda", ort, "ort_tests_s")]
        entry["runs"] = {}
        for label, keyword, staged, estimated in runs:
            if label == "ort_cuda" and staged is None:
                entry["runs"][label] = {"status": "skipped", "reason": "onnxruntime-gpu is not staged (--stage-ort)"}
                continue
            allotted = self.clock.left() - needed
            if allotted < 30:
                entry["runs"][label] = {"status": "skipped", "reason": f"{allotted:.0f} s left before the training"}
                entry["status"] = "shortened"
                continue
            xml_path = self.work / f"pytest_{label}.xml"
            env = dict(self.env)
            if staged is not None:  # onnxruntime-gpu first on the path, for this pytest only
                env["PYTHONPATH"] = os.pathsep.join([staged["site"], env["PYTHONPATH"]])
            command = [sys.executable, "-m", "pytest", "-m", "gpu", "-k", keyword, "tests/test_gpu.py", "-q", "-rs",
                       "-p", "no:cacheprovider", f"--junitxml={xml_path}"]  # fmt: skip
            started = time.monotonic()
            try:
                limit = min(allotted, 2 * estimating.assumption(estimated))  # a hang must not eat the training
                code = self.processes.call(command, self.work / f"pytest_{label}.log", limit, env)
                run = {"exit_code": code, **junit(xml_path)}
            except TimeoutError as exc:
                run = {"status": "timed out", "reason": str(exc), **junit(xml_path)}
                entry["status"] = "shortened"
            run["seconds"] = round(time.monotonic() - started, 1)
            run["log_tail"] = tail(self.work / f"pytest_{label}.log", 1500)
            entry["runs"][label] = run
        counts = [r for r in entry["runs"].values() if "passed" in r]
        entry["passed"] = sum(r["passed"] for r in counts)
        entry["failed"] = sum(r["failed"] + r["errors"] for r in counts)
        entry["skipped"] = sum(r["skipped"] for r in counts)
        if entry["failed"]:
            entry["status"] = "failed"
            entry["error"] = f"{entry['failed']} gpu tests failed"

    def probe(self, entry: dict[str, Any]) -> None:
        if not self.plan.probe:
            raise Skip("dry run: the probe starts the same worker as the grid once more; left out to keep it short")
        if not self.ok("cache"):
            raise Skip("no slice cache")
        est = self.estimate["stages_s"]["probe"]
        spare = self.clock.left() - self.reserve_after_training() - self.minimum_training()
        if spare < 2 * est:
            raise Skip(f"{spare:.0f} s spare, the probe needs ~{est:.0f} s: all of it goes to the grid")
        latent, beta = EXPORT_POINT
        config = self.base_config() | EXPORT_EXTRAS | {"out": str(self.runs / "probe"), "latent": latent, "beta": beta,
                                                       "epochs": 1, "force": True}  # fmt: skip
        process, result_path = self.worker("probe", config, self.plan.cores)
        try:
            process.wait(max(1.0, min(3 * est, spare)))
        except subprocess.TimeoutExpired:
            self.processes.end(process)
            raise TimeoutError("the probe ran past its share of the budget") from None
        result = json.loads(result_path.read_text()) if result_path.is_file() else {"ok": False, "error": "no result"}
        metrics = read_metrics(self.runs / "probe")
        if not result.get("ok") or not metrics:
            raise RuntimeError(result.get("error", "no epoch finished") + " | " + tail(self.work / "probe.log", 800))
        entry.update(run=run_name(latent, beta), epochs=1, images_per_s=round(metrics[0]["images_per_s"], 1),
                     wall_s=round(result["wall_s"], 1), cache_on_gpu=result.get("cache_on_gpu"),
                     max_memory_allocated_mib=result.get("max_memory_allocated_mib"))  # fmt: skip

    def training(self, entry: dict[str, Any]) -> None:
        if not self.ok("cache"):
            raise Skip("no slice cache")
        plan = self.plan
        deadline = time.monotonic() + self.clock.left() - self.reserve_after_training()
        threads = max(1, plan.cores // len(plan.points))
        started = time.monotonic()
        entry["parallel_runs"] = len(plan.points)
        entry["threads_per_run"] = threads
        phase_a = self.train_phase("calibration", plan.calibration_epochs, False, deadline, threads)
        entry["phases"] = [phase_a["summary"]]
        finished = [name for name, run in phase_a["runs"].items() if run["epochs"] >= plan.calibration_epochs]
        target = plan.calibration_epochs
        if phase_a["summary"]["ended_at_deadline"]:
            entry["status"], entry["reason"] = "shortened", "calibration epochs ended at the time budget"
        elif not finished:
            raise RuntimeError("no run finished its calibration epochs: " + "; ".join(
                f"{name}: {run.get('error')}" for name, run in phase_a["runs"].items()))  # fmt: skip
        else:
            epoch_s, start_s = epoch_timing(phase_a, plan.calibration_epochs)
            room = deadline - time.monotonic() - start_s - 0.05 * (deadline - time.monotonic())
            extra = int(room // epoch_s) if epoch_s > 0 else 0
            target = min(plan.max_epochs, plan.calibration_epochs + max(0, extra))
            entry["planning"] = {"epoch_s": round(epoch_s, 2), "start_s": round(start_s, 2), "room_s": round(room, 1),
                                 "target_epochs": target, "max_epochs": plan.max_epochs}  # fmt: skip
            if target > plan.calibration_epochs:
                phase_b = self.train_phase("continued", target, True, deadline, threads, only=finished)
                entry["phases"].append(phase_b["summary"])
                if phase_b["summary"]["ended_at_deadline"]:
                    entry["status"], entry["reason"] = "shortened", "continued epochs ended at the time budget"
            else:
                entry["reason"] = f"no room for more than the {plan.calibration_epochs} calibration epochs"
                if plan.max_epochs > plan.calibration_epochs:
                    entry["status"] = "shortened"
        entry["grid_wall_s"] = round(time.monotonic() - started, 1)
        entry["runs"] = {run_name(*point): run_summary(self.runs, self.work, *point) for point in plan.points}
        steady = [run["images_per_s_steady"] for run in entry["runs"].values() if run.get("images_per_s_steady")]
        entry["aggregate_images_per_s"] = round(sum(steady), 1) if steady else None
        entry["epochs_target"] = target
        failed = [name for name, run in entry["runs"].items() if not run["epochs"]]
        if failed:
            entry["status"], entry["error"] = "failed", f"runs without a finished epoch: {', '.join(failed)}"

    def train_phase(self, label: str, epochs: int, resume: bool, deadline: float, threads: int,
                    only: list[str] | None = None) -> dict[str, Any]:
        processes = {}
        launched = time.monotonic()
        self.monitor.stage = f"training/{label}"
        for latent, beta in self.plan.points:
            name = run_name(latent, beta)
            if only is not None and name not in only:
                continue
            config = self.base_config() | (EXPORT_EXTRAS if (latent, beta) == EXPORT_POINT else {}) | {
                "out": str(self.runs / name), "latent": latent, "beta": beta, "epochs": epochs, "resume": resume,
                "force": not resume}  # fmt: skip
            processes[name] = self.worker(f"{name}.{label}", config, threads)
        counts = {name: len(read_metrics(self.runs / name)) for name in processes}
        stamps: dict[str, list[float]] = {name: [] for name in processes}
        ended_at_deadline = False
        while any(process.poll() is None for process, _ in processes.values()):
            now = time.monotonic()
            for name in processes:
                count = len(read_metrics(self.runs / name))
                stamps[name] += [now - launched] * (count - counts[name])
                counts[name] = count
            if now > deadline:
                ended_at_deadline = True
                for process, _ in processes.values():
                    self.processes.end(process)
                break
            time.sleep(0.25)
        now = time.monotonic()
        runs = {}
        for name, (_process, result_path) in processes.items():
            count = len(read_metrics(self.runs / name))
            stamps[name] += [now - launched] * (count - counts[name])
            result = json.loads(result_path.read_text()) if result_path.is_file() else {"ok": False}
            if not result.get("ok") and not ended_at_deadline:
                result.setdefault("error", "no result")
                result["log_tail"] = tail(self.work / f"{name}.{label}.log", 1500)
            runs[name] = {"epochs": count, "epoch_done_s": [round(s, 2) for s in stamps[name]], **result}
        summary = {"label": label, "epochs": epochs, "resume": resume, "runs": len(processes),
                   "wall_s": round(now - launched, 1), "ended_at_deadline": ended_at_deadline,
                   "gpu": self.monitor.summary(f"training/{label}")}  # fmt: skip
        self.monitor.stage = "training"
        return {"summary": summary, "runs": runs}

    def export(self, entry: dict[str, Any]) -> None:
        run = self.runs / run_name(*EXPORT_POINT)
        if not (run / "checkpoint_best.pt").is_file():
            raise Skip(f"{run.name} has no checkpoint_best.pt")
        entry["rule"] = ("the β 1, latent 50 run (the point both sweeps share), its checkpoint of lowest "
                         "validation loss (checkpoint_best.pt)")  # fmt: skip
        entry["run"] = run.name
        command = [sys.executable, "-m", "export", str(run), "--out", str(self.model), "--fp16", "--force",
                   "--validation-data", str(self.study / "PHANTOM-0001")]  # fmt: skip
        budget = self.clock.left() - self.reserve_after_training() + (
            DRY_RESERVES["export"] if self.plan.mode == "dry-run" else self.estimate["stages_s"]["export"])
        code = self.processes.call(command, self.work / "export.log", budget, self.env)
        if code != 0:
            raise RuntimeError(f"python -m export failed: {tail(self.work / 'export.log', 1200)}")
        card = json.loads((self.model / "model.json").read_text())
        shutil.copyfile(self.model / "model.json", self.out / "model.json")
        self.report["files"].append("model.json")
        export = card.get("export", {})
        entry["exporter"] = export.get("exporter")
        entry["parity"] = export.get("parity", {}).get("max_abs_diff")
        entry["parity_fp16"] = export.get("parity_fp16", {}).get("max_abs_diff")
        entry["files_mb"] = {name: round(item["bytes"] / 1e6, 2) for name, item in card.get("files", {}).items()}

    def ort_check(self, entry: dict[str, Any]) -> None:
        if not self.ok("export"):
            raise Skip("no exported model")
        staged = ort_stage.installed() if self.plan.device == "cuda" else None
        env = dict(self.env)
        device = "cpu"
        if self.plan.device == "cpu":
            entry["reason"] = "dry run: a CPU session stands in for CUDA"
        elif staged is None:
            entry["reason"] = "onnxruntime-gpu is not staged (--stage-ort): CPU figures and samples only"
        else:
            env["PYTHONPATH"] = os.pathsep.join([staged["site"], env["PYTHONPATH"]])
            device = "cuda"
        result_path = self.work / "ort_check.json"
        name = run_name(*EXPORT_POINT)
        epochs = self.report["stages"].get("training", {}).get("runs", {}).get(name, {}).get("epochs")
        command = [sys.executable, str(HERE / "ort_check.py"), str(self.model), str(result_path), "--device", device,
                   "--samples", str(self.out / "samples.png"), "--caption", f"{name}, {epochs} epochs: prior samples",
                   "--images", "64" if self.plan.mode == "gpu" else "8", "--repeats", "5" if device == "cuda" else "2"]
        timeout = self.clock.left() - (DRY_RESERVES["report"] if self.plan.mode == "dry-run" else
                                       self.estimate["stages_s"]["report"])  # fmt: skip
        code = self.processes.call(command, self.work / "ort_check.log", timeout, env)
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        entry.update(result)
        if (self.out / "samples.png").is_file():
            self.report["files"].append("samples.png")
        if code != 0 or not result.get("ok"):
            entry["status"] = "failed"
            entry.setdefault("error", result.get("error") or tail(self.work / "ort_check.log", 800))
        elif device == "cpu" and self.plan.device == "cuda":
            entry["status"] = "shortened"

    def finish(self) -> None:
        name = run_name(*EXPORT_POINT)
        recon = sorted((self.runs / name).glob("recon_epoch*.png"))
        if recon:
            shutil.copyfile(recon[-1], self.out / "recon.png")
            self.report["files"].append("recon.png")
        if self.monitor.available:
            self.report["files"].append("gpu_samples.csv")
        self.report["files"] = sorted(set(self.report["files"]) | {"report.json"})
        wall = self.clock.elapsed()
        self.report.update(finished_utc=_now(), wall_s=round(wall, 1), within_budget=wall <= self.plan.budget_s)
        self.report["summary"] = summary_lines(self.report)

    def run(self) -> int:
        self.monitor.start()
        try:
            self.stage("install", self.install)
            data = threading.Thread(target=self.data_stages)  # CPU work beside the GPU tests
            data.start()
            self.stage("gpu_tests", self.gpu_tests)
            data.join()
            self.stage("probe", self.probe)
            self.stage("training", self.training)
            self.stage("export", self.export)
            self.stage("ort_check", self.ort_check)
        finally:
            self.processes.end_all()
            self.monitor.stop()
            self.finish()
            self.write_report()
        for line in self.report["summary"]["lines"]:
            print(line, flush=True)
        failed = [name for name, stage in self.report["stages"].items() if stage["status"] == "failed"]
        return 1 if failed else 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU at toy size")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="report folder (default: $OUT)")
    parser.add_argument("--work", type=Path, help="phantom, cache and runs (default: a new folder under /tmp)")
    parser.add_argument("--budget-s", type=float, help=f"time budget (default {BUDGET_S:.0f}; dry run 300)")
    parser.add_argument("--wheels", type=Path, help="install these carried wheels first (into /tmp/ctgen-site)")
    parser.add_argument("--stage-ort", type=Path, metavar="DIR", help="stage carried onnxruntime-gpu parts and exit")
    parser.add_argument("--note", default="", help="recorded in the report (e.g. the commit)")
    parser.add_argument("--estimate-only", action="store_true", help="print the estimate and exit")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # end the children and write the report first
    if args.stage_ort is not None:
        ort_stage.stage(args.stage_ort)
        return 0
    # the dry run's budget only guards against a hang: on a shared 2-core machine it takes 40-100 s
    budget = args.budget_s if args.budget_s is not None else (300.0 if args.dry_run else BUDGET_S)
    plan = Plan.dry(budget) if args.dry_run else Plan.gpu(budget)
    gpu_plan = asdict(Plan.gpu(BUDGET_S if args.dry_run else budget))
    gpu_estimate = estimating.estimate(gpu_plan)
    print(estimating.format_estimate(gpu_estimate, gpu_plan), flush=True)
    if args.estimate_only:
        return 0
    if args.out is None:
        parser.error("--out is required when $OUT is not set")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ctgen-acceptance-"))
    work.mkdir(parents=True, exist_ok=True)
    acceptance = Acceptance(plan, gpu_estimate, args.out, work, args.wheels, args.note)
    try:
        return acceptance.run()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
