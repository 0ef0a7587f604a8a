"""NIfTI volumes (ctgen.io.nifti) wherever a slice goes: reoriented to axial stacks by their affine, HU from the
scale slope and intercept, slices named VOLUME#K; and multi-frame DICOM encoded frame by frame."""

from __future__ import annotations

import json

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")

from conftest import invoke  # noqa: E402
from ctgen.io.dicom import read_frames, read_series, read_slice, write_series  # noqa: E402
from ctgen.examples import example_path  # noqa: E402
from ctgen.io.nifti import read_volume, volume_header  # noqa: E402
from ctgen.io.scan import scan  # noqa: E402


def _phantom_series(folder):
    """The three shipped phantom slices (256² at 0.9 mm) as one axial DICOM series, 0.9 mm apart."""
    hu = np.stack([read_slice(example_path(name)).hu for name in "abc"])
    return write_series(hu, folder, spacing_mm=0.9, description="phantom examples", derivation="tests",
                        patient_id="EX", patient_name="EX")


def _nifti_of(series, path, *, storage=("R", "A", "S"), scaled=True):
    """A NIfTI volume of a DICOM series, as a converter writes one: voxel (i, j, k) = (column, row, slice) in
    RAS, then stored in the axis order and directions ``storage`` (nibabel's axis codes)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    slices = read_series(series)
    first = slices[0]
    row_dir, col_dir = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    step = np.array(slices[1].position_mm) - np.array(first.position_mm)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * first.spacing_mm[1]
    lps[:3, 1] = col_dir * first.spacing_mm[0]
    lps[:3, 2] = step
    lps[:3, 3] = first.position_mm
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    hu = np.stack([one.hu for one in slices], axis=-1).transpose(1, 0, 2)  # (columns, rows, slices)
    stored = np.rint(hu + 1024).astype(np.int16) if scaled else hu.astype(np.float32)
    image = nibabel.Nifti1Image(stored, affine)
    image = image.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(storage)))
    data = bytearray(image.to_bytes())
    if scaled:  # stored values + scl_inter = HU (nibabel would rescale on its own when saving)
        data[112:120] = np.array([1.0, -1024.0], "<f4").tobytes()  # scl_slope, scl_inter of the NIfTI-1 header
    if str(path).endswith(".gz"):
        import gzip

        data = gzip.compress(bytes(data), mtime=0)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    return _phantom_series(folder / "dicom")


@pytest.mark.parametrize("storage", [("R", "A", "S"), ("L", "P", "S"), ("L", "A", "I"), ("S", "R", "A"),
                                     ("P", "I", "L")])
def test_volumes_in_any_storage_orientation_read_as_the_axial_series(series, tmp_path, storage):
    volume = _nifti_of(series[0].parent, tmp_path / "vol.nii.gz", storage=storage)
    slices = read_volume(volume)
    dicom = read_series(series[0].parent)
    assert len(slices) == 3 and volume_header(volume).shape == (256, 256, 3)
    for mine, theirs in zip(slices, dicom):
        np.testing.assert_array_equal(mine.hu, theirs.hu)
        np.testing.assert_allclose(mine.spacing_mm, theirs.spacing_mm)
        np.testing.assert_allclose(mine.position_mm, theirs.position_mm, atol=1e-4)
        np.testing.assert_allclose(mine.orientation, theirs.orientation, atol=1e-6)
    assert [one.path for one in slices] == [f"{volume}#{k}" for k in range(3)]
    assert read_volume(volume, [2])[0].hu.tolist() == slices[2].hu.tolist()


def test_a_volume_encodes_to_the_latents_of_its_dicom_series(series, tmp_path, model, workdir):
    volume = _nifti_of(series[0].parent, tmp_path / "vol.nii.gz", storage=("L", "P", "I"))
    assert invoke("encode", series[0].parent, "-m", model, "--out", "dicom.npz").exit_code == 0
    result = invoke("encode", volume, "-m", model, "--out", "nifti.npz")
    assert result.exit_code == 0, result.stderr
    with np.load(workdir / "dicom.npz") as dicom, np.load(workdir / "nifti.npz") as nifti:
        assert list(nifti["files"]) == [f"{volume}#{k}" for k in range(3)]
        np.testing.assert_allclose(nifti["mu"], dicom["mu"], atol=1e-4)
        print(f"NIfTI vs DICOM latents: max difference {np.abs(nifti['mu'] - dicom['mu']).max():.2e}")


def test_one_slice_of_a_volume_for_interpolate_traverse_and_reconstruct(series, tmp_path, model, workdir):
    volume = _nifti_of(series[0].parent, tmp_path / "vol.nii", scaled=False)
    result = invoke("traverse", volume, "-m", model, "--units", "0-1", "--json")  # the middle slice, with a note
    assert result.exit_code == 0 and json.loads(result.stdout)["center"] == "vol.nii#1", result.stderr
    assert invoke("traverse", volume, "--slice", "1", "-m", model, "--units", "0-1", "--force").exit_code == 0
    result = invoke("interpolate", f"{volume}#0", f"{volume}#2", "--steps", "3", "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["inputs"] == [f"{volume}#0", f"{volume}#2"]
    result = invoke("interpolate", volume, series[1], "--slice", "0", "-m", model, "--steps", "3", "--force")
    assert result.exit_code == 0, result.stderr  # --slice picks the volume's slice; the DICOM slice is frame 0
    result = invoke("reconstruct", volume, "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    assert [row["file"] for row in json.loads(result.stdout)["slices"]] == [f"{volume}#{k}" for k in range(3)]
    assert sorted(p.name for p in (workdir / "reconstructions").iterdir()) == ["vol_000.png", "vol_001.png",
                                                                                "vol_002.png"]


def test_scan_and_sidecars(series, tmp_path):
    folder = tmp_path / "nifti"
    folder.mkdir()
    _nifti_of(series[0].parent, folder / "ct.nii.gz")
    _nifti_of(series[0].parent, folder / "ct2.nii.gz")
    (folder / "ct2.json").write_text(json.dumps({"PatientID": "EX", "StudyInstanceUID": "1.2.3",
                                                 "ConvolutionKernel": "H30s", "Modality": "CT"}))
    mr = nibabel.Nifti1Image(np.random.default_rng(0).uniform(0, 900, (32, 32, 4)).astype(np.float32), np.eye(4))
    nibabel.save(mr, str(folder / "t1.nii.gz"))
    inventory = scan([folder, series[0].parent])
    by_name = {entry.path.split("/")[-1]: entry for entry in inventory.entries}
    assert set(by_name) == {"ct.nii.gz", "ct2.nii.gz", "t1.nii.gz", "0000.dcm", "0001.dcm", "0002.dcm"}  # no sidecar
    assert by_name["ct.nii.gz"].reason == "ok" and by_name["ct.nii.gz"].frames == 3
    assert by_name["t1.nii.gz"].reason == "not-ct" and "not CT in HU" in by_name["t1.nii.gz"].detail
    assert by_name["ct2.nii.gz"].kernel == "H30s"
    assert by_name["ct2.nii.gz"].patient == by_name["0000.dcm"].patient  # the sidecar names the patient
    assert by_name["ct.nii.gz"].patient not in (by_name["ct2.nii.gz"].patient, by_name["t1.nii.gz"].patient)


def test_a_four_dimensional_image_is_refused(tmp_path, model, workdir):
    image = nibabel.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4))
    nibabel.save(image, str(tmp_path / "fmri.nii.gz"))
    result = invoke("encode", tmp_path / "fmri.nii.gz", "-m", model)
    assert result.exit_code == 1 and "not a 3-D volume" in result.stderr


def test_encode_takes_every_frame_of_a_multi_frame_file(archive, model, workdir):
    enhanced = archive[0] / "C" / "enhanced.dcm"
    result = invoke("encode", enhanced, "-m", model, "--out", "frames.npz")
    assert result.exit_code == 0, result.stderr
    from ctgen.api import load_generator

    generator = load_generator(model, device="cpu")
    expected = generator.encode(read_frames(enhanced))
    with np.load(workdir / "frames.npz") as latents:
        assert list(latents["files"]) == [f"{enhanced}#{k}" for k in range(3)]
        np.testing.assert_allclose(latents["mu"], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ hostile volumes
from nifti_build import ct_volume, nifti_bytes, write_nifti  # noqa: E402

from conftest import one_error_line  # noqa: E402
from ctgen.io.dicom import set_max_pixels  # noqa: E402
from ctgen.errors import DicomError  # noqa: E402


def _declaring(path, dims, *, version=1):
    """A small gzipped volume whose header declares ``dims`` voxels (the data holds a few)."""
    import gzip

    raw = nifti_bytes(ct_volume((4, 4, 1)), version=version)
    size = 348 if version == 1 else 540
    header = (nibabel.Nifti1Header if version == 1 else nibabel.Nifti2Header)(binaryblock=raw[:size], check=False)
    header["dim"] = [len(dims), *dims] + [1] * (7 - len(dims))
    path.write_bytes(gzip.compress(header.binaryblock + raw[size:], mtime=0))
    return path


@pytest.mark.parametrize("version", [1, 2])
def test_the_pixel_limit_is_checked_on_the_header_before_any_voxel(tmp_path, version, model, workdir):
    big = _declaring(tmp_path / "big.nii.gz", (1024, 1024, 256), version=version)
    with pytest.raises(DicomError, match="exceeds the limit of 67,108,864 decoded pixels"):
        volume_header(big)
    entry = scan([big]).entries[0]
    assert entry.reason == "not-dicom" and "exceeds the limit" in entry.detail
    one_error_line(invoke("encode", big, "-m", model, "--out", "l.npz"), str(big), "exceeds the limit")
    one_error_line(invoke("traverse", big, "--slice", "1", "-m", model), str(big), "exceeds the limit")
    small = write_nifti(tmp_path / "small.nii.gz", ct_volume((40, 40, 2)), version=version)
    assert invoke("encode", small, "-m", model, "--out", "ok.npz").exit_code == 0
    try:
        one_error_line(invoke("--max-pixels", "1000", "encode", small, "-m", model, "--out", "no.npz"), str(small),
                       "exceeds the limit of 1,000")
    finally:
        set_max_pixels(None)  # the option sets the process-wide limit, and the runner runs in this process
    assert scan([small]).entries[0].reason == "ok"


def test_a_gzipped_volume_is_inflated_only_as_far_as_its_header_declares(tmp_path):
    import time
    import zlib

    raw = nifti_bytes(ct_volume((16, 16, 2)))
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = packer.compress(raw) + packer.flush(zlib.Z_FULL_FLUSH)  # what the header declares
    zeros = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = zeros.compress(bytes(16 << 20)) + zeros.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, repeatable
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(body + block * 64)  # then 1 GiB of zeros in a 1 MB file
    start = time.perf_counter()
    assert [one.hu.shape for one in read_volume(path)] == [(16, 16)] * 2
    assert scan([path]).entries[0].reason == "ok"
    assert time.perf_counter() - start < 1.0  # inflating the gigabyte takes seconds
    path.write_bytes(body[: len(body) // 2])
    with pytest.raises(DicomError, match="truncated"):
        read_volume(path)
    assert scan([path]).entries[0].reason == "not-dicom"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_refused_by_scan_and_reader(tmp_path, bad, model, workdir):
    data = ct_volume((32, 32, 3), np.float32)
    data[:, :, 1] = bad
    path = write_nifti(tmp_path / "bad.nii.gz", data)
    (tmp_path / "bad.json").write_text(json.dumps({"Modality": "CT"}))
    entry = scan([path]).entries[0]
    assert entry.reason == "not-dicom" and "slice 1 holds 1,024 voxels that are not finite" in entry.detail
    assert len(read_volume(path, [0, 2])) == 2  # the other slices read
    with pytest.raises(DicomError, match="slice 1 holds"):
        read_volume(path, [1])
    one_error_line(invoke("encode", path, "-m", model, "--out", "l.npz"), str(path), "not finite")
    everything = write_nifti(tmp_path / "nan.nii", np.full((32, 32, 2), np.nan, np.float32))
    one_error_line(invoke("encode", everything, "-m", model, "--out", "nan.npz"), str(everything), "not finite")
    huge = write_nifti(tmp_path / "huge.nii", np.full((32, 32, 1), 1e300))  # float64 beyond float32
    with pytest.raises(DicomError, match="not finite"):
        read_volume(huge)


@pytest.mark.parametrize("text, reason", [("[" * 100_000 + "]" * 100_000, "nested deeper than"),
                                          ('{"PatientID": ', "not valid JSON"),
                                          ("[1, 2]", "not a JSON object"),
                                          ('{"a": ' * 40 + "1" + "}" * 40, "nested deeper than")])
def test_a_bad_sidecar_is_a_reason_naming_it(tmp_path, text, reason, model, workdir):
    path = write_nifti(tmp_path / "vol.nii.gz", ct_volume((32, 32, 2)))
    (tmp_path / "vol.json").write_text(text)
    entry = scan([tmp_path]).entries[0]
    assert entry.reason == "not-dicom" and entry.detail.startswith("sidecar vol.json: " + reason)
    one_error_line(invoke("traverse", path, "--slice", "1", "-m", model), str(path), "sidecar vol.json", reason)


def test_a_huge_sidecar_or_a_fifo_is_refused(tmp_path):
    import os

    path = write_nifti(tmp_path / "vol.nii", ct_volume())
    (tmp_path / "vol.json").write_text('{"a": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(DicomError, match="sidecar vol.json: larger than 1 MiB"):
        read_volume(path)
    (tmp_path / "vol.json").unlink()
    os.mkfifo(tmp_path / "vol.json")
    with pytest.raises(DicomError, match="sidecar vol.json: not a regular file"):
        volume_header(path)
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(DicomError, match="not a regular file"):
        read_volume(fifo)


@pytest.mark.parametrize("pixdim", [1e-30, 1e30])
def test_an_implausible_spacing_is_refused_by_scan_and_reader_naming_the_file(tmp_path, pixdim, model, workdir):
    path = write_nifti(tmp_path / "tiny.nii.gz", ct_volume((32, 32, 2)), spacing_mm=pixdim)
    entry = scan([path]).entries[0]
    assert entry.reason == "not-dicom" and "implausible pixel spacing" in entry.detail
    one_error_line(invoke("encode", path, "-m", model, "--out", "l.npz"), str(path), "implausible pixel spacing")
