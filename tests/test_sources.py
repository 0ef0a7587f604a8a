"""ctgen.io.sources: how slices are named (``FILE#K``), which slices a path holds and reading them: single-frame
DICOM files, enhanced multi-frame files and NIfTI volumes, the middle slice when none is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import _enhanced_ct, head_hu, not_dicom, write_heads
from ctgen.errors import ArgumentError, DicomError
from ctgen.io.sources import (OneSlice, SourceReader, gather_files, one_slice, read_slices, read_source, selected_sources, slice_count,
                           slice_sources, split_source)
from nifti_build import write_nifti

FRAME_LEVELS_HU = (0.0, 100.0, 200.0)  # added to the head in frame / slice k: tells the slices apart


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict[str, Path]:
    """A folder with two single-frame heads, a 3-frame enhanced CT file, a 3-slice NIfTI volume, a hidden volume
    and a text file; the paths by role."""
    root = tmp_path_factory.mktemp("sources")
    single = write_heads(root / "series", 2, size=32)
    frames = np.stack([head_hu(32) + level for level in FRAME_LEVELS_HU])
    multi = _enhanced_ct(root / "multi.dcm", frames, 2.0, "SOURCES")
    volume = np.stack([np.where(head_hu(32) > -500, 40.0 + level, -1000.0) for level in FRAME_LEVELS_HU], axis=2)
    nifti = write_nifti(root / "vol.nii.gz", volume.astype(np.int16), spacing_mm=2.0)
    (root / ".hidden").mkdir()
    write_nifti(root / ".hidden" / "skip.nii", volume.astype(np.int16))
    (root / "README.txt").write_text("not a slice\n")
    return {"root": root, "single": single[0], "single2": single[1], "multi": multi, "nifti": nifti,
            "text": not_dicom(root)}


@pytest.mark.parametrize("text, expected", [
    ("a.dcm#3", ("a.dcm", 3)),
    ("dir/vol.nii.gz#0", ("dir/vol.nii.gz", 0)),
    ("a.dcm", ("a.dcm", None)),
    ("a.dcm#", ("a.dcm#", None)),
    ("a.dcm#-1", ("a.dcm#-1", None)),
    ("a.dcm#x", ("a.dcm#x", None)),
    ("a#1#2", ("a#1", 2)),
])
def test_split_source(text, expected):
    assert split_source(text) == (Path(expected[0]), expected[1])


def test_an_existing_file_named_with_a_hash_is_one_file(tmp_path):
    odd = tmp_path / "scan#2"
    odd.write_bytes(b"")
    assert split_source(odd) == (odd, None)


def test_slice_count_and_slice_sources(archive):
    assert [slice_count(archive[key]) for key in ("single", "multi", "nifti", "text")] == [1, 3, 3, 1]
    assert slice_sources([archive["single"], archive["multi"], archive["nifti"]]) == [
        str(archive["single"]), *(f"{archive['multi']}#{k}" for k in range(3)),
        *(f"{archive['nifti']}#{k}" for k in range(3))]


def test_gather_files_takes_scans_selection_of_a_folder_and_a_named_file_as_given(archive, tmp_path):
    selections = []
    found = gather_files([archive["root"], archive["single"]], on_selection=selections.append)
    assert found == sorted([archive["single"], archive["single2"], archive["multi"], archive["nifti"]], key=str)
    (selection,) = selections  # notes.dcm and README.txt: not DICOM; .hidden/ is not looked at
    assert (selection.folder, selection.files, selection.used, selection.left_out) == (
        f"{archive['root']}/", 6, 4, {"not-dicom": 2})
    assert selection.note.endswith(": 4 of 6 files used (scan's selection; left out: 2 not-dicom)")
    assert gather_files([archive["text"]]) == [archive["text"]]  # named: taken, and read later
    with pytest.raises(DicomError, match="no such file"):
        gather_files([tmp_path / "missing"])
    missed = []
    assert gather_files([tmp_path / "missing", archive["nifti"]], on_error=lambda item, error: missed.append(item)) \
        == [archive["nifti"]]
    assert missed == [tmp_path / "missing"]


def test_one_slice_names_the_middle_of_a_file_of_several(archive):
    multi, nifti = archive["multi"], archive["nifti"]
    assert one_slice(archive["single"]) == OneSlice(archive["single"], None)
    assert one_slice(archive["single"]).note is None
    middle = one_slice(multi)
    assert (middle.index, middle.middle_of, middle.source) == (1, 3, f"{multi}#1")
    assert middle.note == f"{multi} holds 3 slices; using #1 (the middle one)"
    assert one_slice(f"{nifti}#2").source == f"{nifti}#2" and one_slice(f"{nifti}#2").note is None
    assert one_slice(nifti, 0).index == 0 and one_slice(f"{nifti}#0", 0).index == 0
    with pytest.raises(ArgumentError, match="names slice 2, not 0"):
        one_slice(f"{nifti}#2", 0)


def test_read_slices_of_a_single_frame_file(archive):
    (one,) = read_slices(archive["single"])
    assert one.hu.shape == (32, 32) and one.spacing_mm == pytest.approx((1.5, 1.5))
    np.testing.assert_allclose(one.hu, head_hu(32), atol=1.0)


def test_read_slices_of_a_multi_frame_file_all_or_some(archive):
    frames = read_slices(archive["multi"])
    assert len(frames) == 3 and all(frame.spacing_mm == pytest.approx((2.0, 2.0)) for frame in frames)
    for frame, level in zip(frames, FRAME_LEVELS_HU):
        np.testing.assert_allclose(frame.hu, head_hu(32) + level, atol=1.0)
    picked = read_slices(archive["multi"], [2, 0])
    np.testing.assert_array_equal(np.stack([p.hu for p in picked]), np.stack([frames[2].hu, frames[0].hu]))
    np.testing.assert_array_equal(read_slices(archive["multi"], [1])[0].hu, frames[1].hu)
    with pytest.raises(DicomError, match="frame 3 out of range"):
        read_slices(archive["multi"], [0, 3])


def test_read_slices_of_a_nifti_volume_inferior_first(archive):
    slices = read_slices(archive["nifti"])
    assert len(slices) == 3 and slices[0].hu.shape == (32, 32)
    assert [float(one.hu.max()) for one in slices] == [40.0 + level for level in FRAME_LEVELS_HU]
    assert [float(one.hu.max()) for one in read_slices(archive["nifti"], [2])] == [240.0]
    with pytest.raises(DicomError, match="out of range"):
        read_slices(archive["nifti"], [3])


def test_read_slices_of_a_file_that_is_not_a_slice(archive):
    with pytest.raises(DicomError):
        read_slices(archive["text"])


def test_selected_sources_names_every_slice_of_the_usable_files(archive):
    from ctgen.io.scan import scan

    selected = selected_sources(scan([archive["root"]]).entries)
    resolved = {key: str(path.resolve()) for key, path in archive.items()}
    assert selected == sorted([resolved["single"], resolved["single2"], *(f"{resolved['multi']}#{k}" for k in range(3)),
                               *(f"{resolved['nifti']}#{k}" for k in range(3))])


def test_source_reader_reads_each_file_once_and_as_read_source_does(archive, monkeypatch):
    import ctgen.io.sources as sources

    names = [*(f"{archive['multi']}#{k}" for k in (0, 2, 1)), str(archive["single"]),
             *(f"{archive['nifti']}#{k}" for k in range(3)), f"{archive['text']}#0", f"{archive['text']}#1"]
    expected = [read_source(name).hu for name in names[:-2]]
    reads = []
    real = sources.read_slices
    monkeypatch.setattr(sources, "read_slices", lambda path, indices=None: reads.append(path) or real(path, indices))
    reader = SourceReader()
    for name, hu in zip(names, expected):
        np.testing.assert_array_equal(reader.read(name).hu, hu)
    for name in names[-2:]:  # an unreadable file: its error again, not read again
        with pytest.raises(DicomError):
            reader.read(name)
    assert reads == [archive["multi"], archive["single"], archive["nifti"], archive["text"]]
    with pytest.raises(DicomError, match="slice 3 out of range"):
        reader.read(f"{archive['nifti']}#3")


def test_read_source_reads_the_slice_a_name_stands_for(archive):
    assert [float(read_source(f"{archive['nifti']}#{k}").hu.max()) for k in (2, 0)] == [240.0, 40.0]
    np.testing.assert_array_equal(read_source(f"{archive['multi']}#1").hu, read_slices(archive["multi"], [1])[0].hu)
    np.testing.assert_array_equal(read_source(archive["multi"]).hu, read_slices(archive["multi"], [0])[0].hu)
    np.testing.assert_array_equal(read_source(archive["single"]).hu, read_slices(archive["single"])[0].hu)
    with pytest.raises(DicomError):
        read_source(archive["text"])
