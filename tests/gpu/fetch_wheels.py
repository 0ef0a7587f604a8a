"""Fetch the wheels the GPU machine lacks, and check that every device call stays within 64 MiB.

    python tests/gpu/fetch_wheels.py            # .whl/ (carried by the acceptance call) and .whl-ort/ (staged)

The GPU machine (KINDS.md: Python 3.12, torch, numpy, scipy, scikit-learn, pandas, jinja2, requests,
typer, rich, pillow, onnx, onnxscript and CPU onnxruntime installed; no network) lacks pydicom, the
permissive DICOM decoders and nibabel/nilearn (the phantom's MNI152 template ships in nilearn's wheel).
Their own requirements are all on the machine already (checked against KINDS.md's package list), so
the wheels are fetched with --no-deps and pinned to the versions the development machine tests with.

onnxruntime-gpu (244 MiB as a wheel) is too big for one call. Its wheel is rewritten uncompressed
(same files, same RECORD), compressed with xz (195 MiB) and split into parts of at most 50 MiB in
.whl-ort/, with manifest.json holding the sha256 of every part and of the wheel. Four calls then
carry one part each; ``acceptance.py --stage-ort .whl-ort`` reassembles them under /tmp on the warm
machine (tests/gpu/README.md has the call sequence). The working tree travels in every call too, so the
script adds its size (tracked and untracked-not-ignored files) and fails if any call would pass 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ort_stage import sha256  # the digest the device side checks the parts with (same folder)

REPO = Path(__file__).resolve().parents[2]
WHEELS = {  # name==version: the versions the development venv runs the tests with
    "pydicom": "3.0.2",
    "pylibjpeg": "2.1.0",
    "pylibjpeg-openjpeg": "2.6.0",
    "pylibjpeg-rle": "2.2.0",
    "python-gdcm": "3.2.6",
    "nibabel": "5.4.2",
    "nilearn": "0.14.1",
}
ORT_GPU = ("onnxruntime-gpu", "1.31.1")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]  # fmt: skip
MIB = 1 << 20
CALL_LIMIT = 64 * MIB  # what one device call may carry, working tree included
PART_SIZE = 50 * MIB


def download(requirements: list[str], dest: Path) -> None:
    platform_args = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(dest), *requirements]
    subprocess.run(command, check=True)


def travelling_tree_bytes(repo: Path) -> int:
    """Bytes of the files a device call sends besides carried paths: tracked and untracked-not-ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            check=True, capture_output=True).stdout.split(b"\0")  # fmt: skip
    total = 0
    for name in filter(None, listed):
        path = repo / name.decode()
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def uncompressed_wheel(source: Path, dest: Path) -> None:
    """The same wheel with every member stored: xz then compresses the libraries far better than deflate."""
    with zipfile.ZipFile(source) as packed, zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as stored:
        for info in packed.infolist():
            data = packed.read(info)
            info.compress_type = zipfile.ZIP_STORED
            stored.writestr(info, data)


def xz_compress(source: Path, dest: Path) -> None:
    xz = shutil.which("xz")
    if xz:  # multi-threaded: minutes instead of many minutes
        with open(dest, "wb") as out:
            subprocess.run([xz, "-6", "-T0", "-c", str(source)], stdout=out, check=True)
        return
    with open(source, "rb") as raw, lzma.open(dest, "wb", preset=6) as packed:
        shutil.copyfileobj(raw, packed, 1 << 22)


def split(path: Path, dest: Path, stem: str, part_size: int) -> list[dict]:
    """``stem``.part1, .part2 ... of at most ``part_size`` bytes each, with their sizes and sha256."""
    parts = []
    with open(path, "rb") as stream:
        for index in range(1_000):
            block = stream.read(part_size)
            if not block:
                break
            part = dest / f"{stem}.part{index + 1}"
            part.write_bytes(block)
            parts.append({"file": part.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    return parts


def fetch_ort(dest: Path) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    with tempfile.TemporaryDirectory(dir=REPO) as scratch:
        scratch = Path(scratch)
        download([f"{ORT_GPU[0]}=={ORT_GPU[1]}"], scratch)
        (wheel,) = scratch.glob("*.whl")
        stored = scratch / "stored" / wheel.name
        stored.parent.mkdir()
        uncompressed_wheel(wheel, stored)
        packed = scratch / f"{wheel.name}.xz"
        print(f"fetch: compressing {wheel.name} with xz (a few minutes on 2 cores)", file=sys.stderr)
        xz_compress(stored, packed)
        manifest = {
            "package": ORT_GPU[0], "version": ORT_GPU[1], "wheel": wheel.name, "wheel_sha256": sha256(stored),
            "wheel_bytes": stored.stat().st_size, "downloaded_bytes": wheel.stat().st_size, "compression": "xz",
            "xz_sha256": sha256(packed), "xz_bytes": packed.stat().st_size,
            "parts": split(packed, dest, f"{ORT_GPU[0]}.xz", PART_SIZE),
        }  # fmt: skip
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-ort", action="store_true", help="only the small wheels (.whl/)")
    parser.add_argument("--check-only", action="store_true", help="download nothing; print and check the sizes")
    args = parser.parse_args()

    wheels, ort = REPO / ".whl", REPO / ".whl-ort"
    if not args.check_only:
        shutil.rmtree(wheels, ignore_errors=True)  # one version of each: two stop the whole install there
        wheels.mkdir()
        download([f"{name}=={version}" for name, version in WHEELS.items()], wheels)
        if not args.skip_ort:
            fetch_ort(ort)

    tree = travelling_tree_bytes(REPO)
    calls = []  # (what the call carries, bytes with the tree)
    if wheels.is_dir():
        calls.append(("acceptance call: carry .whl", tree + folder_bytes(wheels)))
    manifest_path = ort / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        for part in manifest["parts"]:
            calls.append((f"stage call: carry .whl-ort/{part['file']} + manifest.json",
                          tree + part["bytes"] + manifest_path.stat().st_size))  # fmt: skip
    print(f"working tree that travels with every call: {tree / MIB:.1f} MiB")
    if wheels.is_dir():
        print(f".whl/: {folder_bytes(wheels) / MIB:.1f} MiB in {len(list(wheels.glob('*.whl')))} wheels")
    if manifest_path.is_file():
        print(f".whl-ort/: {manifest['package']} {manifest['version']}, {manifest['downloaded_bytes'] / MIB:.1f} MiB "
              f"as a wheel, {manifest['xz_bytes'] / MIB:.1f} MiB as xz in {len(manifest['parts'])} parts")
    over = False
    for what, size in calls:
        flag = "ok" if size <= CALL_LIMIT else "OVER THE 64 MiB LIMIT"
        over |= size > CALL_LIMIT
        print(f"  {what}: {size / MIB:.1f} MiB  {flag}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
