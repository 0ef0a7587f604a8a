"""Archive scanning and head geometry benchmarks. Not collected by pytest.

    python tests/bench/bench_scan.py [--files 4000] [--work DIR]

Scanning: an archive of real-scanner headers (pydicom's CT_small.dcm, a GE file with private tags, copied
with new SOP instance UIDs) and ctgen-written slices, half each, plus a few files that are skipped; `ctgen.io.scan`
decides every file from its header on one core (CPU time of this single process) against the target of
issue 13 (>= 1,500 files/s), beside pydicom's dcmread(stop_before_pixels=True) alone.

Geometry: the cost of the head mask in preprocessing, 512² at 0.45-0.48 mm to 128² at 1.875 mm, on pydicom's
real head slices (one in a head holder): to_model slices/s, head_centroid against the plain body centroid it
replaced, brain_fraction and slice_warnings per slice.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def build_archive(root: Path, count: int) -> int:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    from ctgen.io.dicom import write_series

    done = root.with_name(root.name + ".done")
    if done.is_file():
        return int(done.read_text())
    real = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    (root / "real").mkdir(parents=True, exist_ok=True)
    half = count // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in range(half):
            real.SOPInstanceUID = real.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            real.save_as(root / "real" / f"IM{index:05d}", enforce_file_format=True)  # no extension, as PACS do
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 30, (count - half, 128, 128)).astype(np.float32)
    write_series(hu, root / "ctgen", spacing_mm=1.8, description="bench", derivation="bench_scan")
    (root / "notes.txt").write_text("not DICOM\n")
    done.write_text(str(count + 1))
    return count + 1


def bench_scan(root: Path) -> None:
    import pydicom

    from ctgen.io.scan import list_files, scan

    files = list_files([root])
    scan([root], files=files[:50])  # imports and caches warm
    best = {}
    for _ in range(3):
        started, cpu = time.perf_counter(), time.process_time()
        inventory = scan([root], files=files)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        best["scan"] = min(best.get("scan", (1e9, 0))[0], cpu), wall
    started = time.process_time()
    for path in files[:2000]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the text file
                pass
    pydicom_rate = min(2000, len(files)) / (time.process_time() - started)
    cpu, wall = best["scan"]
    rate = len(files) / cpu
    counts = inventory.counts()
    print(f"scan: {len(files)} files ({counts}) in {cpu:.2f} s CPU / {wall:.2f} s wall on one core: "
          f"{rate:,.0f} files/s (target >= 1,500: {'met' if rate >= 1500 else 'NOT met'}); "
          f"pydicom dcmread(stop_before_pixels) alone: {pydicom_rate:,.0f} files/s")


def bench_geometry() -> None:
    from pydicom.data import get_testdata_file

    from ctgen.io.dicom import read_slice
    from ctgen.images.geometry import brain_fraction, head_centroid, slice_warnings
    from ctgen.images.preprocess import Grid, to_model

    slices = [read_slice(get_testdata_file(name)) for name in ("693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")]
    grid = Grid(size=128, spacing_mm=1.875)

    def plain_centroid(hu):
        mask = (hu > np.float32(-500.0)).view(np.uint8)
        per_row, per_col = mask.sum(axis=1, dtype=np.int32), mask.sum(axis=0, dtype=np.int32)
        total = int(per_row.sum())
        return float(per_row @ np.arange(hu.shape[0]) / total), float(per_col @ np.arange(hu.shape[1]) / total)

    def per_slice(function, repeats: int = 300) -> float:
        started = time.process_time()
        for index in range(repeats):
            function(slices[index % len(slices)])
        return (time.process_time() - started) / repeats

    import ctgen.images.preprocess as preprocess

    head_centring = preprocess._body_centroid
    for _ in range(2):
        preprocess._body_centroid = lambda hu, spacing_mm=None: plain_centroid(hu)
        before = per_slice(lambda s: to_model(s.hu, s.spacing_mm, grid))
        preprocess._body_centroid = head_centring
        timings = {
            "to_model": per_slice(lambda s: to_model(s.hu, s.spacing_mm, grid)),
            "head_centroid": per_slice(lambda s: head_centroid(s.hu, s.spacing_mm)),
            "plain centroid": per_slice(lambda s: plain_centroid(s.hu)),
            "brain_fraction": per_slice(lambda s: brain_fraction(s.hu, s.spacing_mm)),
            "slice_warnings": per_slice(lambda s: slice_warnings(s.hu, s.spacing_mm, 128, 1.875, s.orientation)),
        }
    print(f"preprocessing 512² -> 128²: {1 / timings['to_model']:,.0f} slices/s on one core with the head mask, "
          f"{1 / before:,.0f} with the plain body centroid it replaced; "
          + ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in timings.items() if name != "to_model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=None, help="keep the archive here between runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = (args.work or Path(scratch)) / "archive"
        build_archive(root, args.files)
        bench_scan(root)
    bench_geometry()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
