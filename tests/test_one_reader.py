"""One reader: training's cache (``train.data``), ``ctgen evaluate`` and ``ctgen encode`` take the same slices
from one messy archive (single-frame files, an enhanced multi-frame file, a NIfTI volume, and files that must be
skipped), and see them as the same model images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import _enhanced_ct, head_hu, invoke, not_dicom, write_heads


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """4 single-frame CT files, a 3-frame enhanced CT, a 3-slice NIfTI volume; a text file named .dcm, a
    truncated DICOM file and a README that every reader must leave out."""
    nibabel = pytest.importorskip("nibabel")
    root = tmp_path_factory.mktemp("messy")
    heads = write_heads(root / "series", 4)
    frames = np.stack([head_hu(160, shift=-1.0 * k, seed=20 + k) for k in range(3)])
    (root / "enhanced").mkdir()
    _enhanced_ct(root / "enhanced" / "multi.dcm", frames, 1.5, "ANON-E")
    volume = np.stack([head_hu(160, shift=2.0 * k, seed=30 + k) for k in range(3)], axis=-1).transpose(1, 0, 2)
    (root / "nifti").mkdir()
    nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.diag([1.5, 1.5, 5.0, 1.0])),
                 str(root / "nifti" / "head.nii.gz"))
    junk = root / "junk"
    junk.mkdir()
    not_dicom(junk)
    data = heads[0].read_bytes()
    (junk / "cut.dcm").write_bytes(data[: len(data) - 3000])
    (junk / "README").write_text("export log\n")
    return root


def _identity(source: str) -> str:
    path, _, index = str(source).partition("#")
    return f"{Path(path).resolve()}#{index or 0}"


def test_training_evaluation_and_encode_take_the_same_slices_as_the_same_images(messy, tiny_model_dir, tmp_path):
    from ctgen.api import gather_files, load_generator
    from ctgen.evaluation.evaluate import evaluate_model
    from ctgen.evaluation.evaluate_data import read_study, study_slices
    from ctgen.runtime.model import load_model
    from train.data import build_cache

    model = load_model(tiny_model_dir)
    grid = model.grid
    cache = build_cache([messy], tmp_path / "cache", grid, workers=1)
    trained = {f"{Path(r['file']).resolve()}#{r['frame']}": index for index, r in enumerate(cache.records)}
    assert len(trained) == len(cache.records) == 4 + 3 + 3

    sources, refused = study_slices(messy)
    skipped: list[str] = []
    read = {_identity(sources[index]): image
            for index, _, image, _, _ in read_study(sources, range(len(sources)), grid, None, skipped,
                                                    lambda *a: None, "reading")}
    assert sorted(refused) == ["not-dicom", "not-dicom", "truncated"] and not skipped
    assert set(read) == set(trained)

    generator = load_generator(tiny_model_dir)
    loaded, failed = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # slices unlike the training data: not the point here
        for name, one in generator.iter_load(gather_files([messy]), workers=1):
            if isinstance(one, Exception):
                failed.append(name)
            else:
                loaded[_identity(name)] = one.image
    assert set(loaded) == set(trained) and [Path(name).name for name in failed] == ["cut.dcm", "notes.dcm"]

    for identity, index in trained.items():
        assert np.abs(read[identity] - loaded[identity]).max() <= 1e-6, identity
        # the cache stores float16: the same image, rounded as the cache rounds it
        assert np.abs(read[identity].astype(np.float16).astype(np.float32) - cache.images[index]).max() <= 1e-6

    out = tmp_path / "latents.npz"
    result = invoke("encode", messy, "--skip-bad", "--model", tiny_model_dir, "--out", out, "--quiet")
    assert result.exit_code == 1 and result.stderr.count("ctgen: skipped") == 2, result.stderr
    with np.load(out) as written:
        encoded = dict(zip(map(_identity, written["files"]), written["mu"]))
    assert set(encoded) == set(trained)
    names = sorted(encoded)
    mu = model.encode(np.stack([read[name] for name in names])[:, None])[0]
    assert np.abs(mu - np.stack([encoded[name] for name in names])).max() <= 1e-5

    report = evaluate_model(model, messy, factors=False, real=False, max_slices=100)
    assert report["study"]["slices"] == report["study"]["evaluated"] == len(trained)
    assert report["study"]["files"] == 4 + 1 + 1 + 3 and report["study"]["skipped_files"] == 3
