"""One reader: training's cache (``train.data``), ``ctgen evaluate`` and ``ctgen encode`` take the same slices
from one messy archive (single-frame files, an enhanced multi-frame file, a NIfTI volume, and files that must be
skipped), and see them as the same model images; a folder given to ``ctgen encode``, ``ctgen reconstruct`` or the
API is read through scan's selection, a file named explicitly as given."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import _enhanced_ct, head_hu, invoke, not_dicom, write_archive, write_heads


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
    assert set(loaded) == set(trained) and not failed  # scan's selection leaves the junk out: no errors

    for identity, index in trained.items():
        assert np.abs(read[identity] - loaded[identity]).max() <= 1e-6, identity
        # the cache stores float16: the same image, rounded as the cache rounds it
        assert np.abs(read[identity].astype(np.float16).astype(np.float32) - cache.images[index]).max() <= 1e-6

    out = tmp_path / "latents.npz"
    result = invoke("encode", messy, "--model", tiny_model_dir, "--out", out, "--quiet")
    assert result.exit_code == 0 and not result.stderr, result.stderr
    with np.load(out) as written:
        encoded = dict(zip(map(_identity, written["files"]), written["mu"]))
    assert set(encoded) == set(trained)
    names = sorted(encoded)
    mu = model.encode(np.stack([read[name] for name in names])[:, None])[0]
    assert np.abs(mu - np.stack([encoded[name] for name in names])).max() <= 1e-5

    report = evaluate_model(model, messy, factors=False, real=False, max_slices=100)
    assert report["study"]["slices"] == report["study"]["evaluated"] == len(trained)
    assert report["study"]["files"] == 4 + 1 + 1 + 3 and report["study"]["skipped_files"] == 3


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``conftest.write_archive``: a localizer, reformats, duplicates, an MR slice and non-images beside the
    axial slices; with the reason code that scan gives each file."""
    root = tmp_path_factory.mktemp("pacs") / "archive"
    return root, write_archive(root)


def _left_out(expected: dict[str, str]) -> dict[str, int]:
    from ctgen.io.scan_entry import SKIP_REASONS

    counts = Counter(expected.values())
    return {reason: counts[reason] for reason in SKIP_REASONS if counts[reason]}


def test_a_folder_gives_training_evaluate_encode_reconstruct_and_the_api_the_same_slices(pacs, tiny_model_dir,
                                                                                       tmp_path):
    from ctgen.api import load_generator
    from ctgen.evaluation.evaluate_data import study_slices
    from ctgen.runtime.model import load_model
    from train.data import build_cache

    root, expected = pacs
    cache = build_cache([root], tmp_path / "cache", load_model(tiny_model_dir).grid, workers=1)
    trained = {f"{Path(r['file']).resolve()}#{r['frame']}" for r in cache.records}
    assert len(trained) == len(cache.records) == 9 + 3  # 9 single-frame files and the 3 frames of C/enhanced.dcm
    assert set(map(_identity, study_slices(root)[0])) == trained

    out = tmp_path / "latents.npz"
    result = invoke("encode", root, "--model", tiny_model_dir, "--out", out)
    assert result.exit_code == 0 and "error" not in result.stderr, result.stderr
    with np.load(out) as written:
        names = list(written["files"])
    assert set(map(_identity, names)) == trained and names == sorted(names)
    assert all(name.startswith(str(root)) for name in names)  # named under the folder as given

    result = invoke("reconstruct", root, "--model", tiny_model_dir, "--out", tmp_path / "panels", "--json",
                    "--quiet")
    assert result.exit_code == 0, result.stderr
    assert {_identity(row["file"]) for row in json.loads(result.stdout)["slices"]} == trained

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # slices unlike the training data: not the point here
        loaded = list(load_generator(tiny_model_dir).iter_load([root], workers=1))
    assert not [name for name, one in loaded if isinstance(one, Exception)]
    assert [_identity(name) for name, _ in loaded] == sorted(map(_identity, names))


def test_the_note_says_what_scan_left_out_of_a_folder_and_json_records_it(pacs, tiny_model_dir, tmp_path):
    root, expected = pacs
    used = sum(reason == "ok" for reason in expected.values())
    left_out = _left_out(expected)
    assert set(left_out) >= {"localizer", "not-axial", "duplicate", "not-ct", "not-dicom"}
    reasons = ", ".join(f"{count} {reason}" for reason, count in left_out.items())
    result = invoke("encode", root, "--model", tiny_model_dir, "--out", tmp_path / "a.npz", "--json")
    assert result.exit_code == 0, result.stderr
    note = f"ctgen: note: {root}/: {used} of {len(expected)} files used (scan's selection; left out: {reasons})"
    assert result.stderr.count("ctgen: note:") == 1 and note in result.stderr.splitlines(), result.stderr
    assert json.loads(result.stdout)["folders"] == [{"folder": f"{root}/", "files": len(expected), "used": used,
                                                     "left_out": left_out}]
    quiet = invoke("encode", root, "--model", tiny_model_dir, "--out", tmp_path / "b.npz", "--json", "--quiet")
    assert quiet.exit_code == 0 and "note" not in quiet.stderr, quiet.stderr
    assert json.loads(quiet.stdout)["folders"][0]["left_out"] == left_out


def test_a_file_named_explicitly_is_read_as_given_even_outside_scans_selection(pacs, tiny_model_dir):
    root, expected = pacs
    assert expected["A/extra/scout.dcm"] == "localizer" and expected["A/extra/coronal.dcm"] == "not-axial"
    result = invoke("encode", root / "A" / "extra" / "scout.dcm", root / "A" / "extra" / "coronal.dcm",
                    "--model", tiny_model_dir)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [
        str(root / "A" / "extra" / "coronal.dcm"), str(root / "A" / "extra" / "scout.dcm")]
    assert "coronal.dcm: not axial" in result.stderr and "note" not in result.stderr
