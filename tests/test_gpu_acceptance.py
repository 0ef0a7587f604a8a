"""The GPU acceptance run, rehearsed on the CPU: ``tests/gpu/acceptance.py --dry-run`` and its report,
and the staging of a wheel carried in parts (tests/gpu/ort_stage.py) on a small stand-in wheel."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "gpu" / "acceptance.py"
EXPORT_BIND = ["rotation_deg", "level", "head_width_max_mm", "head_length_max_mm"]  # acceptance.EXPORT_EXTRAS
STAGES = ["install", "phantom", "cache", "gpu_tests", "probe", "training", "export", "ort_check"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    pytest.importorskip("torch")
    pytest.importorskip("nilearn")
    root = tmp_path_factory.mktemp("acceptance")
    # a stand-in nvidia-smi, so that the sampling thread, its summaries and gpu_samples.csv run too
    (root / "bin").mkdir()
    fake = root / "bin" / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '37, 2048, 143771, [N/A]'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(root / "bin"), os.environ.get("PATH", "")])}  # fmt: skip
    env.pop("OUT", None)
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(root / "out"), "--work",
                             str(root / "work")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result, root / "out"


def test_dry_run_prints_an_estimate_that_fits_nine_minutes(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("ESTIMATE of the GPU run:")
    estimate = json.loads((out / "report.json").read_text())["estimate"]
    assert estimate["budget_s"] == 540 and estimate["fits"] and estimate["total_s"] <= 9 * 60
    assert set(estimate["stages_s"]) == {*STAGES, "ort_tests", "report"}
    assert estimate["epochs_planned"] >= 2 and all(entry["why"] for entry in estimate["assumptions"].values())


def test_dry_run_report_has_every_stage(dry_run):
    result, out = dry_run
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "ctgen-gpu-acceptance" and report["mode"] == "dry-run"
    assert report["within_budget"] and report["wall_s"] <= report["budget_s"]
    stages = report["stages"]
    assert list(stages) == STAGES
    assert stages["install"]["status"] == "skipped" and stages["gpu_tests"]["status"] == "skipped"
    assert all(stage["reason"] for stage in stages.values() if stage["status"] == "skipped")
    for name in ("phantom", "cache", "training", "export", "ort_check"):
        assert stages[name]["status"] == "ok", (name, stages[name])
    assert stages["probe"]["status"] in ("ok", "skipped")  # skipped only when the shared CPU was too slow

    training = stages["training"]
    assert [phase["label"] for phase in training["phases"]] == ["calibration", "continued"]
    assert set(training["runs"]) == {"latent50_beta1", "latent50_beta20"}
    for run in training["runs"].values():
        assert run["epochs"] == 2 and run["best_val_loss"] > 0 and run["images_per_s_epoch1"] > 0
        assert run["cache_on_gpu"] is False  # CPU
    assert training["planning"]["target_epochs"] == 2

    export = stages["export"]
    assert export["run"] == "latent50_beta1" and export["parity_fp16"]
    card = json.loads((out / "model.json").read_text())  # the exported run binds units and adds the image terms
    assert [entry["factor"] for entry in card["binding"]["units"]] == EXPORT_BIND
    assert card["binding"]["cycle_weight"] == 0.3  # the latent cycle ran too
    losses = card["objective"]["losses"]
    assert card["architecture"]["config"]["upsample"] == "subpixel" and losses["ms_ssim"]["weight"] == 0.1
    assert losses["focal_frequency"]["weight"] == 1.0 and losses["adversarial"]["weight"] == 0.01
    check = stages["ort_check"]
    assert check["device"] == "cpu" and check["fp32 (CPU stand-in)"]["within_tolerance"]
    assert check["cpu"]["timing"]["decode_images_per_s"] > 0

    assert set(report["files"]) == {"report.json", "samples.png", "recon.png", "model.json", "gpu_samples.csv"}
    assert report["gpu"]["nvidia_smi"] and report["gpu"]["memory_max_mib"] == 2048
    assert training["gpu"]["util_mean_pct"] == 37 and training["phases"][0]["gpu"]["samples"] >= 1
    assert (out / "gpu_samples.csv").read_text().startswith("t_s,stage,util_pct")
    from PIL import Image

    with Image.open(out / "samples.png") as picture:
        assert picture.size == (4 * 64, 4 * 64 + 16)
    assert report["summary"]["lines"][0].startswith("acceptance (dry-run)")


# ------------------------------------------------------------------------------------------ staging
def _stand_in_wheel(folder: Path) -> Path:
    """A pure-Python wheel pip installs: one module, its dist-info and RECORD."""
    wheel = folder / "standin-1.0-py3-none-any.whl"
    files = {
        "standin/__init__.py": b"VALUE = 42\n" + b"# padding\n" * 3000,
        "standin-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: standin\nVersion: 1.0\n",
        "standin-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                       b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, "standin-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("standin-1.0.dist-info/RECORD", record)
    return wheel


def test_stage_joins_parts_over_calls_and_installs_apart(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    try:
        import ort_stage
    finally:
        sys.path.pop(0)
    wheel = _stand_in_wheel(tmp_path)
    packed = lzma.compress(wheel.read_bytes())
    size = len(packed) // 2 + 1
    blocks = [packed[:size], packed[size:]]
    manifest = {"package": "standin", "version": "1.0", "wheel": wheel.name,
                "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                "parts": [{"file": f"standin.xz.part{i + 1}", "bytes": len(block),
                           "sha256": hashlib.sha256(block).hexdigest()} for i, block in enumerate(blocks)]}  # fmt: skip
    stage_dir = tmp_path / "stage"
    for index in (1, 0, 1):  # part 2 first: reported as missing part 1; then part 1; then part 2 again
        carried = tmp_path / f"call{index}"
        carried.mkdir(exist_ok=True)
        (carried / "manifest.json").write_text(json.dumps(manifest))
        (carried / manifest["parts"][index]["file"]).write_bytes(blocks[index])
        state = ort_stage.stage(carried, stage_dir)
    assert "start again from part1" in capsys.readouterr().out
    assert state["state"] == "installed" and ort_stage.installed(stage_dir)["version"] == "1.0"
    site = ort_stage.site_dir(stage_dir)
    assert (site / "standin" / "__init__.py").read_bytes().startswith(b"VALUE = 42")
    assert not (stage_dir / "parts").exists() and not (stage_dir / wheel.name).exists()

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps(manifest | {"parts": [
        {**manifest["parts"][0], "sha256": "0" * 64}, manifest["parts"][1]]}))  # fmt: skip
    (tmp_path / "bad" / "standin.xz.part1").write_bytes(blocks[0])
    with pytest.raises(SystemExit, match="does not match"):
        ort_stage.stage(tmp_path / "bad", tmp_path / "stage2")
