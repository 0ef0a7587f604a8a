"""Stage onnxruntime-gpu on the warm GPU machine, one carried part per call (``acceptance.py --stage-ort``).

Each call copies the parts it carries (checked against manifest.json) to STAGE_DIR, which outlives the call
while the machine stays warm. Once every part is there, they are joined, decompressed, checked against the
wheel's sha256 and installed with pip into their own --target folder, STAGE_DIR/site: never into the
environment that holds the CPU onnxruntime. Only the processes that check the CUDA provider put that
folder first on PYTHONPATH. Standard library only: runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

STAGE_DIR = Path("/tmp/ctgen-ort-gpu")
READY = "ctgen-ready.json"  # written into the site folder last: the install is complete


def site_dir(stage_dir: Path = STAGE_DIR) -> Path:
    return stage_dir / "site"


def installed(stage_dir: Path = STAGE_DIR) -> dict | None:
    """The ready record ({"package", "version", "site"}) when onnxruntime-gpu is staged and installed, else None."""
    marker = site_dir(stage_dir) / READY
    return json.loads(marker.read_text()) if marker.is_file() else None


def sha256(path: Path) -> str:
    """Hex sha256 of a file (fetch_wheels.py writes the manifest with this one too)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def stage(carried: Path, stage_dir: Path = STAGE_DIR) -> dict:
    """Take the parts under ``carried``; install once all are staged. Returns the state, also printed."""
    done = installed(stage_dir)
    if done is not None:
        state = {"state": "installed", **done}
        print(f"stage: {done['package']} {done['version']} is already installed in {done['site']}")
        return state
    manifest_path = carried / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"stage: {manifest_path} is missing: carry it with every part (tests/gpu/README.md)")
    manifest = json.loads(manifest_path.read_text())
    parts_dir = stage_dir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    for part in manifest["parts"]:
        source = carried / part["file"]
        if source.is_file() and not (parts_dir / part["file"]).is_file():
            if source.stat().st_size != part["bytes"] or sha256(source) != part["sha256"]:
                raise SystemExit(f"stage: {source} does not match manifest.json (re-run fetch_wheels.py)")
            shutil.copyfile(source, parts_dir / f".{part['file']}.tmp")
            (parts_dir / f".{part['file']}.tmp").rename(parts_dir / part["file"])
            print(f"stage: took {part['file']} ({part['bytes'] / 2**20:.1f} MiB)")
    have = [part["file"] for part in manifest["parts"] if (parts_dir / part["file"]).is_file()]
    missing = [part["file"] for part in manifest["parts"] if part["file"] not in have]
    if missing:
        print(f"stage: {len(have)} of {len(manifest['parts'])} parts staged; next carry: {missing[0]}"
              + (" (earlier parts are gone: the machine was fresh; start again from part1)"
                 if missing[0] != manifest["parts"][len(have)]["file"] else ""))  # fmt: skip
        return {"state": "partial", "have": have, "missing": missing}

    wheel = stage_dir / manifest["wheel"]
    with open(wheel, "wb") as out:
        decompressor = lzma.LZMADecompressor()
        for part in manifest["parts"]:
            with open(parts_dir / part["file"], "rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    out.write(decompressor.decompress(block))
    if sha256(wheel) != manifest["wheel_sha256"]:
        raise SystemExit(f"stage: {wheel} does not match manifest.json after joining the parts")
    site = site_dir(stage_dir)
    shutil.rmtree(site, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--target", str(site), str(wheel)], check=True)  # fmt: skip
    record = {"package": manifest["package"], "version": manifest["version"], "site": str(site)}
    (site / READY).write_text(json.dumps(record) + "\n")
    shutil.rmtree(parts_dir, ignore_errors=True)
    wheel.unlink()
    print(f"stage: installed {record['package']} {record['version']} into {site} (PYTHONPATH only for the ORT check)")
    return {"state": "installed", **record}
