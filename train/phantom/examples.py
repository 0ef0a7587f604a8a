"""``python -m train.phantom.examples``: the example slices that ship with ctgen (``ctgen example NAME``).

Three phantom slices of three patients that no training study holds (their own seed stream), at different
levels, rotations and contrast: 256² at 0.9 mm (the 512² render block-averaged), JPEG 2000 lossless, so
that they are small and exercise a compressed transfer syntax. Same code, same bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

# name (ctgen.examples.EXAMPLES) -> (patient index in the examples' own seed stream, slice level)
RENDER = {"a": (0, 0.45), "b": (1, 0.62), "c": (2, 0.30)}
SEED = 20261201  # not the seed of any training study
DOWNSAMPLE = 2


def render_examples(out: Path) -> list[Path]:
    """Render and write every example into ``out``; returns the paths."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless, generate_uid

    from ctgen.io.dicom import write_slice
    from ctgen.examples import EXAMPLES
    from train.phantom.render import MATRIX, PIXEL_MM, render_slice, sample_patient

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, description in EXAMPLES.items():
        index, level = RENDER[name]
        rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(index,)))
        patient = sample_patient(rng)
        if name == "c":  # one example with contrast, whatever the draw
            patient.update(contrast=1.0, contrast_hu=300.0)
        hu = render_slice({**patient, "level": level}, rng)
        small = hu.reshape(MATRIX // DOWNSAMPLE, DOWNSAMPLE, MATRIX // DOWNSAMPLE, DOWNSAMPLE).mean(axis=(1, 3))
        entropy = ["ctgen examples", str(SEED), name]
        with tempfile.TemporaryDirectory() as folder:
            plain = write_slice(small, Path(folder) / "plain.dcm", spacing_mm=PIXEL_MM * DOWNSAMPLE,
                                description=f"ctgen example {name}", derivation=f"train.phantom.examples: {description}",
                                patient_id=f"EXAMPLE-{name.upper()}", patient_name=f"EXAMPLE^{name.upper()}",
                                study_uid=generate_uid(entropy_srcs=[*entropy, "study"]),
                                series_uid=generate_uid(entropy_srcs=[*entropy, "series"]),
                                timestamp=datetime(2000, 1, 1, 12, 0, 0))
            ds = pydicom.dcmread(plain)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
            path = out / f"{name}.dcm"
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.phantom.examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ctgen/examples/slices"), help="folder of the example files")
    args = parser.parse_args(argv)
    for path in render_examples(args.out):
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
