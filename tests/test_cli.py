"""Every command through Typer's runner on the tiny exported model (see tests/conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from ctgen import __version__
from ctgen.io.dicom import read_slice
from conftest import CT_SMALL, files_under, invoke, one_error_line, one_usage_line


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"ctgen {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("sample", "interpolate", "traverse", "encode", "decode", "reconstruct", "info", "units"):
        assert command in result.stdout
    assert "samples.png" in invoke("sample", "--help").stdout


# ----------------------------------------------------------------------------------------------- sample
def test_sample_default_grid_is_deterministic(model, workdir):
    result = invoke("sample", "--n", 6, "--model", model)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout is for data only
    first = (workdir / "samples.png").read_bytes()
    assert png(workdir / "samples.png").ndim == 2
    assert invoke("sample", "--n", 6, "-m", model, "-o", "again.png").exit_code == 0
    assert (workdir / "again.png").read_bytes() == first
    for seed in (0, 1):  # the random tiny model's images barely vary: compare HU, not 8-bit pixels
        assert invoke("sample", "--n", 6, "-m", model, "-o", f"seed{seed}.npy", "--seed", seed).exit_code == 0
    assert not np.array_equal(np.load(workdir / "seed0.npy"), np.load(workdir / "seed1.npy"))


def test_sample_per_file_formats_and_json(model, workdir):
    result = invoke("sample", "--n", 5, "-m", model, "--per-file", "npy", "--format", "npy", "--json",
                    "--batch-size", 2)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["command"] == "sample" and summary["model"]["provider"] == "CPUExecutionProvider"
    (entry,) = summary["outputs"]  # only --per-file given: no grid
    assert entry["kind"] == "per_file_npy" and entry["count"] == 5 and len(entry["files"]) == 5
    stack = np.stack([np.load(path) for path in entry["files"]])
    assert stack.shape == (5, 64, 64) and stack.dtype == np.float32
    assert -50.0 <= stack.min() and stack.max() <= 250.0  # HU within the model's window

    assert invoke("sample", "--n", 5, "-m", model, "-o", "all.npy", "--batch-size", 3).exit_code == 0
    np.testing.assert_array_equal(np.load(workdir / "all.npy"), stack)  # batching does not change samples

    assert invoke("sample", "--n", 3, "-m", model, "--per-file", "png", "-q").exit_code == 0
    assert files_under(workdir / "png") == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    picture = png(workdir / "png" / "sample_00000.png")  # the 64-px grid enlarged to 256, its name on top
    assert picture.shape[1] == 256 and picture.shape[0] > 256 and picture[:20].max() == 255


def test_per_file_sampling_draws_latents_batch_by_batch(model, workdir, monkeypatch):
    from ctgen.api import Generator, load_generator

    generator = load_generator(model, device="cpu")
    as_always = generator.sample(5, seed=3, temperature=0.7)  # the samples that --seed 3 has always given

    def all_at_once(*args, **kwargs):
        raise AssertionError("sample drew every latent up front")

    monkeypatch.setattr(Generator, "latents", all_at_once)
    result = invoke("sample", "--n", 5, "-m", model, "--seed", 3, "-t", 0.7, "--per-file", "npy", "--format", "npy",
                    "--batch-size", 2, "-q")
    assert result.exit_code == 0, result.stderr
    files = np.stack([np.load(workdir / "npy" / f"sample_{index:05d}.npy") for index in range(5)])
    assert files.tobytes() == as_always.tobytes()
    start, first = next(generator.iter_sample(10**12, seed=3, temperature=0.7, batch_size=2))  # terabytes at once
    assert start == 0 and first.tobytes() == as_always[:2].tobytes()


def test_sample_dicom_is_derived_and_names_the_model(model, workdir, tiny_model_dir):
    result = invoke("sample", "--n", 3, "-m", model, "--per-file", "dcm", "--format", "dcm", "-o", "grid.png")
    assert result.exit_code == 0, result.stderr
    paths = sorted((workdir / "dcm").glob("*.dcm"))
    assert [p.name for p in paths] == ["sample_00000.dcm", "sample_00001.dcm", "sample_00002.dcm"]
    ds = pydicom.dcmread(paths[1])
    sha = json.loads((tiny_model_dir / "model.json").read_text())["files"]["encoder.onnx"]["sha256"]
    assert "DERIVED" in ds.ImageType and ds.PatientIdentityRemoved == "YES"
    assert "tiny" in ds.DerivationDescription and sha in ds.ImageComments
    # prior samples are unrelated images: each is its own series of one study, never a fake stacked volume
    datasets = [pydicom.dcmread(p) for p in paths]
    assert [d.SeriesNumber for d in datasets] == [1, 2, 3] and all(d.InstanceNumber == 1 for d in datasets)
    assert len({d.SeriesInstanceUID for d in datasets}) == 3 and len({d.StudyInstanceUID for d in datasets}) == 1
    hu = read_slice(paths[0]).hu
    npy = invoke("sample", "--n", 1, "-m", model, "-o", "one.npy")
    assert npy.exit_code == 0
    np.testing.assert_allclose(hu, np.load(workdir / "one.npy")[0], atol=0.5)
    assert not [p for p in workdir.rglob(".*") if p.name != ".modules.json"]  # no temporary leftovers


def test_sample_never_overwrites_and_checks_all_targets_first(model, workdir):
    (workdir / "per").mkdir()
    (workdir / "per" / "sample_00002.png").write_bytes(b"keep")
    result = invoke("sample", "--n", 4, "-m", model, "--per-file", "per")
    one_error_line(result, "sample_00002.png", "already exists", "--force")
    assert files_under(workdir) == ["per/sample_00002.png"]  # nothing half-written, no default grid either
    assert invoke("sample", "--n", 4, "-m", model, "--per-file", "per", "--force").exit_code == 0
    assert len(files_under(workdir / "per")) == 4 and (workdir / "per" / "sample_00002.png").read_bytes() != b"keep"


def test_sample_out_folder_and_grid_limit(model, workdir):
    (workdir / "pictures").mkdir()
    assert invoke("sample", "--n", 2, "-m", model, "-o", "pictures").exit_code == 0
    assert (workdir / "pictures" / "samples.png").is_file()
    one_usage_line(invoke("sample", "--n", 1025, "-m", model), "--out", "at most 1024")
    one_usage_line(invoke("sample", "-m", model, "-o", "x.jpg"), "--out", "unsupported file type .jpg")


# ------------------------------------------------------------------------------------------ interpolate
def test_interpolate_strip_gif_and_originals(model, workdir, heads):
    result = invoke("interpolate", heads[0], heads[3], "--steps", 4, "-m", model, "--gif", "--json")
    assert result.exit_code == 0, result.stderr
    kinds = [entry["kind"] for entry in json.loads(result.stdout)["outputs"]]
    assert kinds == ["strip_png", "gif"]
    strip = png(workdir / "interpolation.png")
    with Image.open(workdir / "interpolation.gif") as gif:
        assert gif.format == "GIF" and gif.size[0] == 256 and gif.size[1] > 256  # enlarged, labelled frames
    result = invoke("interpolate", heads[0], heads[3], "--steps", 4, "-m", model, "--with-originals",
                    "--method", "slerp", "-o", "wide.png", "--per-file", "frames", "--format", "npy")
    assert result.exit_code == 0, result.stderr
    assert png(workdir / "wide.png").shape[1] > strip.shape[1]  # two more tiles
    frames = np.stack([np.load(workdir / "frames" / f"interpolation_{i:03d}.npy") for i in range(4)])
    assert frames.shape == (4, 64, 64)


def test_interpolate_ends_are_the_reconstructions(model, workdir):
    assert invoke("interpolate", CT_SMALL, CT_SMALL, "--steps", 3, "-m", model, "--per-file", "f",
                  "--format", "npy").exit_code == 0
    frames = [np.load(workdir / "f" / f"interpolation_{i:03d}.npy") for i in range(3)]
    np.testing.assert_allclose(frames[0], frames[2], atol=1e-4)  # same slice at both ends
    assert invoke("reconstruct", CT_SMALL, "-m", model, "--per-file", "r", "-q").exit_code == 0
    np.testing.assert_allclose(np.load(workdir / "r" / "CT_small.npy"), frames[0], atol=1e-3)


# --------------------------------------------------------------------------------------------- traverse
def test_traverse_slice_units_and_gifs(model, workdir):
    result = invoke("traverse", CT_SMALL, "--units", "0-2,5", "--steps", 5, "--range", 2, "-m", model,
                    "--gif-dir", "gifs", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["units"] == [0, 1, 2, 5] and summary["offsets"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert summary["kl"] == [3.0, 2.2, 1.2, 0.02]  # from the card, whose units the export sorted by KL
    assert files_under(workdir / "gifs") == ["u0.gif", "u1.gif", "u2.gif", "u5.gif"]
    picture = png(workdir / "traverse.png")
    assert picture.shape[0] > 4 * 128 and picture.shape[1] > 5 * 128  # 64-px tiles enlarged twice


def test_traverse_prior_mean_top_units_and_middle_column(model, workdir):
    result = invoke("traverse", "--units", "top3", "-m", model, "--per-file", "cells", "--format", "npy", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["units"] == [0, 1, 2]  # ranked by KL on the card: the export's order
    middles = [np.load(workdir / "cells" / f"u{unit}_+0.00.npy") for unit in (0, 1, 2)]
    np.testing.assert_array_equal(middles[0], middles[1])  # every row's middle is z = 0
    assert invoke("traverse", "-m", model, "-o", "default_units.png", "--json").exit_code == 0


# ----------------------------------------------------------------------------------------------- encode
def test_encode_json_lines_on_stdout(model, workdir, heads):
    result = invoke("encode", heads[0].parent, "-m", model, "--logvar")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in sorted(heads)]
    assert all(len(r["mu"]) == 8 and len(r["logvar"]) == 8 for r in records)
    again = invoke("encode", *reversed(heads), "-m", model)  # sorted, whatever the order given
    assert [json.loads(line)["mu"] for line in again.stdout.splitlines()] == [r["mu"] for r in records]


def test_encode_paths_from_stdin_and_shards(model, workdir, heads):
    result = invoke("encode", "-", "-m", model, input="\n".join(map(str, heads)) + "\n")
    assert result.exit_code == 0, result.stderr
    everything = result.stdout.splitlines()
    parts = []
    for k in (1, 2, 3, 4):
        shard = invoke("encode", heads[0].parent, "-m", model, "--shard", f"{k}/4")
        assert shard.exit_code == 0, shard.stderr
        parts += shard.stdout.splitlines()
    assert parts == everything


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".csv", ".jsonl"])
def test_encode_files_decode_back(model, workdir, heads, suffix):
    logvar = [] if suffix == ".npy" else ["--logvar"]
    result = invoke("encode", *heads[:3], "-m", model, "-o", f"latents{suffix}", "--json", *logvar)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outputs"][0]["count"] == 3
    decoded = invoke("decode", f"latents{suffix}", "-m", model, "-o", "decoded.npy")
    assert decoded.exit_code == 0, decoded.stderr
    assert np.load(workdir / "decoded.npy").shape == (3, 64, 64)
    if suffix == ".npz":
        with np.load(workdir / "latents.npz") as archive:
            assert archive["files"].tolist() == [str(p) for p in heads[:3]]
            assert archive["mu"].shape == archive["logvar"].shape == (3, 8)


def test_encode_decode_pipe_matches_reconstruct(model, workdir, heads):
    lines = invoke("encode", heads[1], "-m", model).stdout
    assert invoke("decode", "-", "-m", model, "-o", "piped.npy", input=lines).exit_code == 0
    assert invoke("reconstruct", heads[1], "-m", model, "--per-file", "r", "-q").exit_code == 0
    np.testing.assert_allclose(np.load(workdir / "piped.npy")[0], np.load(workdir / "r" / "0001.npy"), atol=1e-3)


def test_encode_skip_bad_reports_and_exits_1(model, workdir, heads):
    bad = workdir / "bad.dcm"
    bad.write_text("not dicom")
    result = invoke("encode", heads[0], bad, heads[1], "-m", model, "--skip-bad")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 2
    assert f"ctgen: skipped {bad}: " in result.stderr and "1 of 3 inputs failed" in result.stderr
    result = invoke("encode", heads[0], bad, heads[1], "-m", model, "--skip-bad", "-o", "some.npz")
    assert result.exit_code == 1 and np.load(workdir / "some.npz")["mu"].shape == (2, 8)


def test_encode_without_skip_bad_writes_nothing(model, workdir, heads):
    bad = workdir / "bad.dcm"
    bad.write_text("not dicom")
    result = invoke("encode", heads[0], bad, heads[1], "-m", model)
    one_error_line(result, str(bad))
    assert result.stdout == ""
    one_error_line(invoke("encode", heads[0], bad, "-m", model, "-o", "x.npz"), str(bad))
    assert files_under(workdir) == ["bad.dcm"]


# ----------------------------------------------------------------------------------------------- decode
def test_decode_formats_and_per_file(model, workdir):
    z = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    np.save(workdir / "z.npy", z)
    (workdir / "z.csv").write_text("\n".join(",".join(map(str, row)) for row in z.tolist()))
    (workdir / "z.jsonl").write_text("\n".join(json.dumps({"z": row}) for row in z.tolist()))
    outputs = []
    for name in ("z.npy", "z.csv", "z.jsonl"):
        result = invoke("decode", name, "-m", model, "-o", f"{name}.npy")
        assert result.exit_code == 0, result.stderr
        outputs.append(np.load(workdir / f"{name}.npy"))
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-3)
    np.testing.assert_allclose(outputs[0], outputs[2], atol=1e-3)
    result = invoke("decode", "z.npy", "-m", model, "--per-file", "dec", "--json")
    assert result.exit_code == 0 and not (workdir / "decoded.png").exists()  # only what was asked for
    assert files_under(workdir / "dec") == [f"decoded_0000{i}.png" for i in range(3)]


# ------------------------------------------------------------------------------------------ reconstruct
def test_reconstruct_panels_and_metrics(model, workdir, heads):
    result = invoke("reconstruct", *heads[:2], "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [row["png"] for row in summary["slices"]] == ["reconstructions/0000.png", "reconstructions/0001.png"]
    assert all(row["mae_hu"] > 0 and row["rmse_hu"] >= row["mae_hu"] for row in summary["slices"])
    assert "MAE" in result.stderr and "RMSE" in result.stderr  # the table goes to stderr
    assert png(workdir / "reconstructions" / "0000.png").shape[1] > 3 * 128
    assert invoke("reconstruct", heads[0], "-m", model, "-o", "one.png", "-q").exit_code == 0
    one_usage_line(invoke("reconstruct", *heads[:2], "-m", model, "-o", "two.png"), "--out", "one PNG holds one slice")


# ----------------------------------------------------------------------------------------- info, units
def test_info_and_units(model):
    result = invoke("info", "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["provider"] == "CPUExecutionProvider" and summary["model"]["latent_size"] == 8
    assert set(summary["versions"]) >= {"ctgen", "onnxruntime", "numpy", "pydicom"}
    text = invoke("info", "-m", model)
    assert text.exit_code == 0 and "CPUExecutionProvider" in text.stdout and "sha256" in text.stdout
    units = invoke("units", "-m", model, "--json")
    rows = json.loads(units.stdout)["units"]
    assert [row["unit"] for row in rows][:3] == [0, 1, 2] and rows[0]["kl"] == 3.0 and rows[0]["active"]
    assert "u1" in invoke("units", "-m", model).stdout


def test_debug_shows_the_exception(model, workdir):
    result = invoke("--debug", "traverse", "-m", model, "--units", "99")
    assert result.exit_code == 1 and type(result.exception).__name__ == "ArgumentError"
    result = invoke("traverse", "-m", model, "--units", "99", env={"CTGEN_DEBUG": "1"})
    assert type(result.exception).__name__ == "ArgumentError"


def test_common_options_before_the_command(model, workdir):
    result = invoke("--model", model, "--json", "--seed", 3, "sample", "--n", 2, "-o", "a.npy")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["seed"] == 3
    assert invoke("sample", "--n", 2, "-m", model, "--seed", 3, "-o", "b.npy").exit_code == 0
    np.testing.assert_array_equal(np.load(workdir / "a.npy"), np.load(workdir / "b.npy"))
    assert invoke("--model", "nowhere", "sample", "--n", 2, "-m", model, "-o", "c.npy").exit_code == 0  # own wins
    assert invoke("--force", "sample", "--n", 2, "-m", model, "-o", "c.npy").exit_code == 0


@pytest.fixture(params=["tiny", "default"])
def any_model(request, tiny_model_dir) -> str:
    if request.param == "tiny":
        return str(tiny_model_dir)
    from conftest import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "model.json").is_file():
        pytest.skip("models/default is not built")
    return "default"  # found by name


def test_every_command_on_each_model(any_model, workdir, heads):
    for args in (["sample", "--n", 4], ["interpolate", heads[0], heads[1], "--steps", 3], ["traverse", heads[0]],
                 ["traverse", "-o", "prior.png"], ["encode", *heads[:2], "-o", "z.npz"], ["decode", "z.npz"], ["reconstruct", heads[0]],
                 ["info"], ["units"]):
        result = invoke(*args, "-m", any_model)
        assert result.exit_code == 0, (args, result.stderr)
    assert {"samples.png", "interpolation.png", "traverse.png", "decoded.png", "reconstructions/0000.png"} <= set(
        files_under(workdir))


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ctgen: warning: ")]


def test_slices_unlike_the_training_data_warn_once_each_and_carry_on(model, workdir, heads, archive):
    coronal = archive[0] / "A" / "extra" / "coronal.dcm"
    result = invoke("encode", heads[0], CT_SMALL, coronal, "-m", model, "--out", "latents.npz", "--json")
    assert result.exit_code == 0, result.stderr
    lines = sorted(_warning_lines(result.stderr), key=lambda line: str(coronal) in line)  # files run sorted
    assert len(lines) == 2 and str(CT_SMALL) in lines[0] and str(coronal) in lines[1]
    assert "field of view 85 mm, the model's is 240 mm" in lines[0] and "no brain" in lines[0]
    assert "not axial (slice normal 90°" in lines[1]
    summary = json.loads(result.stdout)
    assert sorted(entry["file"] for entry in summary["warnings"]) == sorted([str(CT_SMALL), str(coronal)])
    with np.load(workdir / "latents.npz") as latents:
        files, found = list(latents["files"]), list(latents["warnings"])
    assert found[files.index(str(heads[0]))] == "" and "no brain" in found[files.index(str(CT_SMALL))]
    lines = invoke("encode", heads[0], CT_SMALL, "-m", model).stdout.splitlines()
    records = {json.loads(line)["file"]: json.loads(line) for line in lines}
    assert "warnings" not in records[str(heads[0])] and len(records[str(CT_SMALL)]["warnings"]) == 2
    invoke("encode", heads[0], CT_SMALL, "-m", model, "--out", "latents.csv")
    assert (workdir / "latents.csv").read_text().splitlines()[0].endswith(",warnings")
    assert invoke("decode", "latents.csv", "-m", model).exit_code == 0  # the column does not disturb reading

    for args in (["reconstruct", CT_SMALL], ["traverse", CT_SMALL, "--units", "0-1"],
                 ["interpolate", heads[0], CT_SMALL, "--steps", "3"]):
        result = invoke(*args, "-m", model, "--json", "--force")
        assert result.exit_code == 0, (args, result.stderr)
        assert len(_warning_lines(result.stderr)) == 1 and str(CT_SMALL) in result.stderr, args
        assert json.loads(result.stdout)["warnings"][0]["file"] == str(CT_SMALL)
    quiet = invoke("traverse", CT_SMALL, "--units", "0-1", "-m", model, "--quiet", "--force")
    assert quiet.exit_code == 0 and quiet.stderr == ""
