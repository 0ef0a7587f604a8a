"""ctgen.io.scan and `ctgen scan`: every file of a PACS-like archive gets its reason code, patient keys that never
merge two people or reveal an ID, and the outputs (table, --json, --out)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import invoke, one_error_line, run_ctgen
from ctgen.io.dicom import patient_key, read_frames, read_slice, write_series
from ctgen.errors import DicomError, InputError
from ctgen.images.geometry import axial_tilt_deg
from ctgen.io.scan import scan
from ctgen.io.scan_entry import REASONS
from dicom_build import (
    dataset_bytes, element, file_bytes, insert_before_pixels, nested_sequences, pixel_data_offset, set_element,
)


def _relative(root: Path, path: str) -> str:
    return str(Path(path).relative_to(root.resolve()))


def test_every_file_gets_its_reason(archive):
    root, expected = archive
    inventory = scan([root])
    found = {_relative(root, entry.path): entry.reason for entry in inventory.entries}
    assert found == expected
    assert set(found.values()) == set(REASONS) - {"unreadable", "invalid"}  # those two: tests below
    by_name = {_relative(root, entry.path): entry for entry in inventory.entries}
    assert by_name["C/enhanced.dcm"].frames == 3  # multi-frame files count per frame
    assert "tilted 20.0°" in by_name["A/extra/tilted.dcm"].detail
    assert by_name["A/extra/matrix1024.dcm"].frames == 1
    assert by_name["A/copy/IM0001"].detail.endswith("A/ax/0000.dcm")  # the first copy is kept
    summary = inventory.summary()
    assert summary["used_files"] == 10 and summary["used_images"] == 12
    assert summary["reasons"]["duplicate"] == 2 and summary["reasons"]["not-axial"] == 2


def test_two_people_behind_one_anonymised_id_are_split_apart_with_a_warning(archive):
    root, _ = archive
    auto = scan([root])
    keys = {folder: {e.patient for e in auto.used if _relative(root, e.path).startswith(folder)} for folder in "ABC"}
    assert all(len(k) == 1 for k in keys.values()) and len(set.union(*keys.values())) == 3
    assert len(auto.warnings) == 1 and "2 different birth dates or sexes" in auto.warnings[0]
    assert patient_key("ANON") in auto.warnings[0] and "ANON" not in auto.warnings[0].replace(patient_key("ANON"), "")
    together = scan([root], split_by="patient")
    keys = {e.patient for e in together.used if _relative(root, e.path)[0] in "AB"}
    assert keys == {patient_key("ANON")} and "kept as one patient" in together.warnings[0]
    by_study = scan([root], split_by="study")
    assert all(e.patient == e.study for e in by_study.used)


def test_empty_patient_id_falls_back_to_the_study(tmp_path, archive):
    hu = pydicom.dcmread(archive[0] / "A" / "ax" / "0000.dcm").pixel_array[None] - 1024.0
    for folder in ("s1", "s2"):
        for path in write_series(hu, tmp_path / folder, spacing_mm=3.5, description="x", derivation="test",
                                 patient_id=""):
            assert pydicom.dcmread(path).PatientID == ""
    inventory = scan([tmp_path])
    assert len({entry.patient for entry in inventory.used}) == 2  # two studies, two patients
    assert len({entry.study for entry in inventory.used}) == 2


def test_axial_tilt():
    assert axial_tilt_deg([1, 0, 0, 0, 1, 0]) == 0
    assert axial_tilt_deg([1, 0, 0, 0, 0, -1]) == pytest.approx(90)
    assert axial_tilt_deg([0, 1, 0, 0, 0, -1]) == pytest.approx(90)
    assert axial_tilt_deg([1, 0, 0, 0, 0.94, 0.342]) == pytest.approx(20, abs=0.1)


def test_scan_json_names_every_skipped_file_with_its_reason(archive, workdir):
    root, expected = archive
    result = invoke("scan", root, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    skipped = {_relative(root, item["path"]): item["reason"] for item in summary["skipped"]}
    assert skipped == {path: reason for path, reason in expected.items() if reason != "ok"}
    assert summary["used_files"] == 10 and summary["patients"] == 3 and summary["reasons"]["ok"] == 10
    assert "archive by series" in result.stderr and "skipped: " in result.stderr
    assert "ctgen: warning: patient " in result.stderr
    assert "ANON" not in result.stdout + result.stderr  # neither the ID nor a name


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_out_writes_one_row_per_file_without_identifiers(archive, workdir, suffix):
    root, expected = archive
    result = invoke("scan", root, "--out", f"inventory{suffix}", "--quiet")
    assert result.exit_code == 0, result.stderr
    text = (workdir / f"inventory{suffix}").read_text()
    rows = list(csv.DictReader(text.splitlines())) if suffix == ".csv" else [json.loads(x) for x in text.splitlines()]
    assert {_relative(root, row["path"]): row["reason"] for row in rows} == expected
    assert {"patient", "study", "series", "frames", "detail"} <= set(rows[0])
    assert "ANON" not in text and "19500101" not in text
    again = invoke("scan", root, "--out", f"inventory{suffix}", "--quiet")
    one_error_line(again, "already exists")


def test_scan_usage_and_input_errors(workdir):
    one_error_line(invoke("scan", workdir / "missing"), "no such file or folder")
    (workdir / "empty").mkdir()
    one_error_line(invoke("scan", workdir / "empty"), "no files found")
    assert invoke("scan", workdir, "--split-by", "series").exit_code == 2
    assert invoke("scan", workdir, "--max-tilt", "120").exit_code == 2
    with pytest.raises(InputError):
        scan([workdir], split_by="series")


def test_scan_runs_without_torch(archive, tmp_path):
    result = run_ctgen(["scan", archive[0], "--json", "--quiet"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["used_images"] == 12


# ------------------------------------------------------------------------ hostile archives (issue 23)
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def _entry(path: Path):
    (entry,) = scan([path]).entries
    return entry


def _within(seconds: int, function, *arguments):
    """``function(*arguments)``, or TimeoutError when it is still running after ``seconds`` (a hang)."""
    import signal

    def hung(*_):
        raise TimeoutError(f"{function.__name__} hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        return function(*arguments)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _ct_small(**attributes) -> pydicom.Dataset:
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_deeply_nested_sequences_are_invalid_for_scan_and_reader(tmp_path):  # items 1 and 5
    for depth in (400, 500):
        path = tmp_path / f"nested{depth}.dcm"
        path.write_bytes(insert_before_pixels(CT_SMALL.read_bytes(), nested_sequences(depth)))
        entry = _entry(path)
        assert (entry.reason, entry.detail) == ("invalid", "sequences nested deeper than 32 levels"), depth
        with pytest.raises(DicomError, match="nested deeper than 32") as caught:
            read_frames(path)
        assert caught.value.__cause__ is None
    shallow = tmp_path / "nested8.dcm"
    shallow.write_bytes(insert_before_pixels(CT_SMALL.read_bytes(), nested_sequences(8)))
    assert _entry(shallow).reason == "ok" and read_frames(shallow)


def test_a_file_cut_anywhere_in_its_file_meta_is_truncated(tmp_path):  # item 1: cuts at 152-155
    data = CT_SMALL.read_bytes()
    for cut in range(132, 400):
        path = tmp_path / "cut.dcm"
        path.write_bytes(data[:cut])
        entry = _entry(path)
        assert entry.reason in ("truncated", "not-dicom", "no-image"), (cut, entry)  # no-image: a cut between
        assert "internal error" not in entry.detail  # elements


@pytest.mark.parametrize("layout", ["implicit-no-preamble", "big-endian"])
def test_files_read_by_pydicom_cut_inside_a_value_are_truncated(tmp_path, layout):  # item 1
    from pydicom.uid import ExplicitVRBigEndian

    ds = _ct_small()
    if layout == "big-endian":
        data, rows = file_bytes(ds, ExplicitVRBigEndian), b"\x00\x28\x00\x10US"
    else:
        data, rows = dataset_bytes(ds, implicit=True, little=True), b"\x28\x00\x10\x00"
    at = data.index(rows)
    for cut in range(at, at + 12):
        path = tmp_path / "cut.dcm"
        path.write_bytes(data[:cut])
        entry = _entry(path)
        assert entry.reason in ("truncated", "not-dicom", "no-image"), (cut, entry)
        assert "internal error" not in entry.detail


def test_links_that_loop_and_fifos_are_unreadable_and_the_scan_goes_on(tmp_path):  # items 1 and 2
    shutil.copy(CT_SMALL, tmp_path / "good.dcm")
    os.symlink("self", tmp_path / "self")
    (tmp_path / "sub").mkdir()
    os.symlink("..", tmp_path / "sub" / "up")  # a folder loop
    os.mkfifo(tmp_path / "pipe")

    inventory = _within(10, scan, [tmp_path])
    found = {Path(entry.path).name: (entry.reason, entry.detail) for entry in inventory.entries}
    assert found["good.dcm"][0] == "ok"
    assert found["pipe"] == ("unreadable", "not a regular file (a FIFO)")
    assert found["self"][0] == "unreadable" and "symbolic links" in found["self"][1]
    assert "up" not in found  # a link to a folder is not followed


def test_a_name_that_is_not_utf8_is_written_escaped(workdir):  # item 1
    root = workdir / "archive"
    root.mkdir()
    with open(os.fsencode(root) + b"/scan\xff.dcm", "wb") as handle:
        handle.write(CT_SMALL.read_bytes())
    result = invoke("scan", root, "--out", "inv.csv", "--quiet")
    assert result.exit_code == 0, result.stderr
    (row,) = csv.DictReader((workdir / "inv.csv").read_text(encoding="utf-8").splitlines())
    assert row["path"].endswith("scan\\xff.dcm") and row["reason"] == "ok"
    result = invoke("scan", root, "--out", "inv.jsonl", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads((workdir / "inv.jsonl").read_text())["path"].endswith("scan\\xff.dcm")


def test_a_deflate_bomb_is_refused_by_the_inflate_limit(tmp_path, monkeypatch):  # item 3
    import time
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    monkeypatch.setenv("CTGEN_MAX_PIXELS", "1000")  # limit: 4 x 1000 bytes + 16 MiB of header
    ds = _ct_small()
    body = dataset_bytes(ds, implicit=False, little=True)
    body = insert_before_pixels(body, element(0x0009, 0x1010, "OB", b"", length=64 << 20))
    at = body.index(b"\x09\x00\x10\x10OB") + 12
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(body[:at]) + packer.compress(bytes(64 << 20)) + packer.compress(body[at:])
    meta = file_bytes(ds, DeflatedExplicitVRLittleEndian)[: -len(dataset_bytes(ds, implicit=False, little=True))]
    path = tmp_path / "bomb.dcm"
    path.write_bytes(meta + deflated + packer.flush())
    assert file_bytes(ds, ExplicitVRLittleEndian)  # the meta above is the deflated file's own
    started = time.perf_counter()
    entry = _entry(path)
    assert entry.reason == "invalid" and "inflates beyond" in entry.detail, entry
    assert time.perf_counter() - started < 5
    with pytest.raises(DicomError, match="inflates beyond"):
        read_frames(path)


@pytest.mark.parametrize("headerless", [False, True])
def test_long_elements_before_the_pixels_are_skipped_not_read(tmp_path, headerless):  # item 4
    import tracemalloc

    ds = _ct_small()
    data = dataset_bytes(ds, implicit=False, little=True) if headerless else CT_SMALL.read_bytes()
    at = pixel_data_offset(data)
    long_element = element(0x0009, 0x1010, "OB", b"", length=256 << 20)
    path = tmp_path / "long.dcm"
    with open(path, "wb") as handle:  # sparse: the 256 MiB value costs no disk
        handle.write(data[:at] + long_element)
        handle.seek(256 << 20, os.SEEK_CUR)
        handle.write(data[at:])
    tracemalloc.start()
    try:
        entry = _entry(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entry.reason == "ok", entry
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("attribute, value, reason", [
    ("NumberOfFrames", "inf", "invalid NumberOfFrames"), ("NumberOfFrames", "nan", "invalid NumberOfFrames"),
    ("NumberOfFrames", "1e400", "invalid NumberOfFrames"), ("PixelSpacing", ["-1", "-1"], "implausible pixel spacing"),
    ("PixelSpacing", ["1e308", "1e308"], "implausible pixel spacing"),
    ("PixelSpacing", "abc", "implausible pixel spacing"), ("RescaleSlope", "0", "invalid RescaleSlope 0"),
    ("BitsAllocated", 12, "BitsAllocated 12 is not supported"), ("Rows", 0, "invalid image size"),
])
def test_scan_says_invalid_where_the_reader_refuses(tmp_path, attribute, value, reason):  # item 5
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag, vr = tag_for_keyword(attribute), dictionary_VR(attribute)
    encoded = struct.pack("<H", value) if vr == "US" else "\\".join(value if isinstance(value, list) else [value])
    encoded = encoded if isinstance(encoded, bytes) else encoded.encode() + b" " * (len(encoded) % 2)
    path = tmp_path / "bad.dcm"
    path.write_bytes(set_element(CT_SMALL.read_bytes(), tag >> 16, tag & 0xFFFF, vr, encoded))
    entry = _entry(path)
    assert entry.reason == "invalid" and entry.detail.startswith(reason), entry
    with pytest.raises(DicomError, match=reason.split()[0]):
        read_frames(path)


def _invalid_for_both(tmp_path, tag: tuple[int, int], vr: str, value: bytes, reason: str) -> None:
    """CT_small with one element set to ``value``: scan says invalid for ``reason``, and the reader refuses it."""
    path = tmp_path / "bad.dcm"
    path.write_bytes(set_element(CT_SMALL.read_bytes(), *tag, vr, value))
    entry = _entry(path)
    assert entry.reason == "invalid" and entry.detail.startswith(reason), entry
    with pytest.raises(DicomError):
        read_frames(path)


@pytest.mark.parametrize("blank", [b"\x1e ", b"\x1c\x1d", b"\x00\x00"])
def test_a_rescale_of_whitespace_only_is_absent_for_scan_and_reader(tmp_path, blank):
    """pydicom strips every whitespace character of a DS value (\\x1c-\\x1f too) and reads the empty slope as
    absent; scan's check strips the same (found by the 10,000-case scan fuzz: scan said invalid, the reader read)."""
    path = tmp_path / "blank.dcm"
    path.write_bytes(set_element(CT_SMALL.read_bytes(), 0x0028, 0x1053, "DS", blank))
    assert _entry(path).reason == "ok"
    assert read_frames(path)


def test_a_frame_count_of_control_characters_is_invalid_for_scan_and_reader(tmp_path):
    """An IS value keeps its control characters in pydicom (only padding goes), and the pixel decoder's int()
    then fails: scan says invalid (found by the 10,000-case scan fuzz, seed 23, after the DS fix)."""
    _invalid_for_both(tmp_path, (0x0028, 0x0008), "IS", b"\x0b\x00", "invalid NumberOfFrames")


@pytest.mark.parametrize("vr, value", [("US", b"IS"), ("OB", b"ISO_IR 100"), ("FL", b"\x00\x00\x80\x3f")])
def test_a_character_set_under_a_binary_vr_is_invalid_for_scan_and_reader(tmp_path, vr, value):
    """pydicom converts SpecificCharacterSet by the VR the element says, and fails on a number or bytes: scan
    refuses it too (found by the 10,000-case scan fuzz, seed 23: a VR mutation to US)."""
    _invalid_for_both(tmp_path, (0x0008, 0x0005), vr, value, "invalid SpecificCharacterSet")


def test_a_photometric_interpretation_with_a_line_break_stays_one_line(tmp_path):
    """Found by the 10,000-case scan fuzz (seed 23): the colour reason quoted the value as it was."""
    path = tmp_path / "colour.dcm"
    path.write_bytes(set_element(CT_SMALL.read_bytes(), 0x0028, 0x0004, "CS", b"RGB\nX "))
    entry = _entry(path)
    assert entry.reason == "colour" and "\n" not in entry.detail and "RGB" in entry.detail, entry
    with pytest.raises(DicomError) as caught:
        read_frames(path)
    assert "\n" not in str(caught.value)


def test_a_one_byte_rows_value_is_invalid_for_scan_and_reader(tmp_path):  # item 5
    data = CT_SMALL.read_bytes()
    rows = data.index(b"\x28\x00\x10\x00US\x02\x00")
    path = tmp_path / "rows.dcm"
    path.write_bytes(data[:rows] + b"\x28\x00\x10\x00US\x01\x00\x80" + data[rows + 10 :])
    entry = _entry(path)
    assert entry.reason == "invalid" and entry.detail.startswith("invalid Rows"), entry
    with pytest.raises(DicomError):
        read_frames(path)


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path, monkeypatch):  # item 6
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    shutil.copy(CT_SMALL, tmp_path / "open" / "a.dcm")
    shutil.copy(CT_SMALL, tmp_path / "closed" / "b.dcm")
    real_scandir = os.scandir

    def scandir(path="."):  # what a user without read permission on the folder gets
        if os.fspath(path).endswith("closed"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    inventory = scan([tmp_path])
    found = {Path(entry.path).name: (entry.reason, entry.detail) for entry in inventory.entries}
    assert found == {"a.dcm": ("ok", ""),
                     "closed": ("unreadable", "cannot list the folder (Permission denied); its files are not scanned")}


def test_scan_of_a_malformed_sop_class_warns_nothing(tmp_path):
    import warnings

    data = CT_SMALL.read_bytes()
    data = set_element(data[: pixel_data_offset(data)], 0x0008, 0x0016, "UI", b"1.2.840.")  # and no pixels
    path = tmp_path / "no-pixels.dcm"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = _entry(path)
    assert entry.reason == "no-image" and not caught, (entry, [str(w.message) for w in caught])


def test_encapsulated_pixel_data_declared_longer_than_the_file_is_truncated_for_both(tmp_path):  # the fuzz
    data = Path(get_testdata_file("693_J2KI.dcm")).read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\xff\xff") + 8
    path = tmp_path / "long.dcm"
    path.write_bytes(data[:at] + struct.pack("<I", len(data) - at + 1000) + data[at + 4 :])
    read_frames(get_testdata_file("693_J2KI.dcm"))  # the file as it was reads
    assert _entry(path).reason == "truncated"
    with pytest.raises(DicomError, match="truncated"):
        read_frames(path)  # pydicom reads the cut value as it is: the codestream decodes


def test_a_character_set_pydicom_cannot_use_is_invalid_for_both(tmp_path):  # found by the scan fuzz
    _invalid_for_both(tmp_path, (0x0008, 0x0005), "CS", b"ISO_IR 100\x00\x08CS", "invalid SpecificCharacterSet")


@pytest.mark.parametrize("name", ["CT_small.dcm", "enhanced"])
def test_native_pixel_data_of_undefined_length_is_truncated_for_both(tmp_path, archive, name):  # the fuzz
    source = CT_SMALL if name == "CT_small.dcm" else archive[0] / "C" / "enhanced.dcm"
    data = source.read_bytes()
    at = pixel_data_offset(data) + 8
    path = tmp_path / "undefined.dcm"
    path.write_bytes(data[:at] + b"\xff\xff\xff\xff" + data[at + 4 :])
    assert _entry(path).reason == "truncated"
    with pytest.raises(DicomError, match="truncated"):
        read_frames(path)


def test_a_huge_number_of_frames_is_not_checked_frame_by_frame(tmp_path, archive):  # found by the scan fuzz
    import time

    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(archive[0] / "C" / "enhanced.dcm")
    ds.compress(RLELossless)
    ds.NumberOfFrames = 191344354
    path = tmp_path / "frames.dcm"
    ds.save_as(path, enforce_file_format=True)

    started = time.perf_counter()
    entry = _within(10, _entry, path)
    assert time.perf_counter() - started < 5 and entry.reason in ("ok", "invalid"), entry


def test_an_image_value_under_another_vr_is_read_by_that_vr(tmp_path):  # found by the scan fuzz
    data = CT_SMALL.read_bytes()
    bits = data.index(b"\x28\x00\x00\x01US\x02\x00")
    path = tmp_path / "vr.dcm"
    path.write_bytes(data[:bits + 4] + b"UL" + data[bits + 6 :])  # 2 bytes are no UL: pydicom keeps the bytes
    entry = _entry(path)
    assert entry.reason == "invalid" and entry.detail.startswith("BitsAllocated"), entry
    with pytest.raises(DicomError, match="BitsAllocated"):
        read_frames(path)


def test_an_optional_value_pydicom_cannot_convert_is_left_out_by_the_reader_as_by_scan(tmp_path):  # the fuzz
    data = CT_SMALL.read_bytes()
    position = data.index(b"\x20\x00\x32\x00DS")  # ImagePositionPatient under VR UL: its text is no UL
    path = tmp_path / "position.dcm"
    path.write_bytes(data[: position + 4] + b"UL" + data[position + 6 :])
    assert _entry(path).reason == "ok"
    assert read_frames(path)[0].position_mm is None


@pytest.mark.parametrize("empty", [False, True])
def test_a_big_endian_file_without_samples_per_pixel_reads_as_scan_says(tmp_path, empty):  # found by the fuzz
    from pydicom.uid import ExplicitVRBigEndian

    ds = _ct_small()
    del ds.SamplesPerPixel
    if empty:
        ds.add_new(0x00280002, "US", None)
    path = tmp_path / "samples.dcm"
    path.write_bytes(file_bytes(ds, ExplicitVRBigEndian))
    assert _entry(path).reason == "ok"
    assert read_frames(path)[0].hu.shape == (128, 128)


def test_a_number_of_frames_of_control_bytes_is_invalid_for_both(tmp_path):  # found by the scan fuzz
    from pydicom.uid import ImplicitVRLittleEndian

    ds = _ct_small()
    data = file_bytes(ds, ImplicitVRLittleEndian)
    path = tmp_path / "frames.dcm"
    path.write_bytes(set_element(data, 0x0028, 0x0008, "IS", b"\x0b\x00", start=len(data) - len(
        dataset_bytes(ds, implicit=True, little=True)), implicit=True))
    entry = _entry(path)
    assert entry.reason == "invalid" and entry.detail.startswith("invalid NumberOfFrames"), entry
    with pytest.raises(DicomError, match="NumberOfFrames"):
        read_frames(path)


def _ct_small_edited(path: Path, edit) -> Path:
    """CT_small with ``edit(ds)`` made to its dataset, saved as ``path``."""
    ds = pydicom.dcmread(CT_SMALL)
    edit(ds)
    ds.save_as(path)
    return path


def _relabel_pixel_data(vr: str):
    def edit(ds):
        ds["PixelData"].VR = vr
    return edit


def test_pixel_data_stored_with_a_text_vr_is_invalid_for_scan_as_for_the_reader(tmp_path):
    """Found by the scan fuzz (random seed): Pixel Data relabelled UT passed scan, and the reader refused it."""
    path = _ct_small_edited(tmp_path / "ut.dcm", _relabel_pixel_data("UT"))
    entry = _entry(path)
    assert (entry.reason, entry.detail) == ("invalid", "pixel data stored with VR UT, not OB or OW")
    with pytest.raises(DicomError):
        read_slice(path)


def test_pixel_data_stored_as_un_is_read_by_scan_as_by_the_reader(tmp_path):
    """Found by the scan fuzz (seed 11): Pixel Data labelled UN (as some converters store it) is read by the reader
    (pydicom takes the element's own VR), so scan must not call it invalid."""
    path = _ct_small_edited(tmp_path / "un.dcm", _relabel_pixel_data("UN"))
    entry = _entry(path)
    assert entry.reason not in ("invalid", "unreadable"), entry
    assert (read_slice(path).hu == read_slice(CT_SMALL).hu).all()


def test_pixel_representation_other_than_0_or_1_is_invalid_for_scan_as_for_the_reader(tmp_path):
    """Found by the scan fuzz (seed 14): PixelRepresentation relabelled CS (its bytes read as the text "\\x01")
    passed scan, and the reader failed on it with "invalid literal for int()"; both now refuse it in one line."""
    for name, (vr, stored) in {"cs": ("CS", b"\x01\x00"), "two": ("US", 2)}.items():
        def edit(ds, vr=vr, stored=stored):
            del ds["PixelRepresentation"]
            ds.add_new(0x00280103, vr, stored)

        path = _ct_small_edited(tmp_path / f"{name}.dcm", edit)
        entry = _entry(path)
        assert entry.reason == "invalid" and entry.detail.startswith("invalid PixelRepresentation"), entry
        with pytest.raises(DicomError, match="invalid PixelRepresentation .* \\(0 unsigned or 1 signed\\)$"):
            read_slice(path)


def test_an_undefined_length_element_other_than_a_sequence_is_judged_as_the_reader_reads_it(tmp_path):
    """Found by the scan fuzz (seed 15): nested items under an element relabelled OB with an undefined length.
    pydicom reads such a value up to the first sequence delimiter and loses the pixel data after it; scan's fast
    parser skipped the items as a sequence's and found the pixel data. Scan now leaves such a file to pydicom, as
    the reader does."""
    nested = nested_sequences(3, tag=(0x0009, 0x1020))
    relabelled = nested[:4] + b"OB" + nested[6:]  # the outermost element's VR: SQ -> OB
    path = tmp_path / "ob.dcm"
    path.write_bytes(insert_before_pixels(CT_SMALL.read_bytes(), relabelled))
    entry = _entry(path)
    assert entry.reason == "no-image", entry
    with pytest.raises(DicomError, match="no pixel data"):
        read_slice(path)
    path.write_bytes(insert_before_pixels(CT_SMALL.read_bytes(), nested))  # as a sequence: read by both
    assert _entry(path).reason == "ok" and read_slice(path).hu.size
