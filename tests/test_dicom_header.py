"""ctgen.io.dicom.header: the fast header reader gives what pydicom reads, and says when a file is cut short."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctgen.io.dicom.header import header_from_values, read_header
from ctgen.io.dicom.header_fast import parse_fast
from ctgen.io.dicom.header_pydicom import read_with_pydicom
from ctgen.errors import DicomError

BUNDLED = sorted(p for p in Path(get_testdata_file("CT_small.dcm")).parent.iterdir()
                 if p.suffix == ".dcm" and p.is_file())


def _fast_path_applies(path: Path) -> bool:
    data = path.read_bytes()[:65536]
    if data[128:132] != b"DICM":
        return False
    with open(path, "rb") as handle:
        return parse_fast(data, path.stat().st_size, handle) is not None


def test_fast_reader_matches_pydicom_on_the_bundled_files():
    compared = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in BUNDLED:
            if path.name == "rtplan_truncated.dcm" or not _fast_path_applies(path):
                continue
            fast = read_header(path)
            slow = header_from_values(path, *read_with_pydicom(path, path.read_bytes()[:65536], path.stat().st_size))
            assert asdict(fast) == asdict(slow), path.name
            compared += 1
    assert compared >= 50


def test_values_of_a_real_ct_slice():
    header = read_header(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert header.modality == "CT" and header.rows == header.columns == 128 and header.frames == 1
    assert header.sop_instance == ds.SOPInstanceUID and header.patient_id == ds.PatientID
    assert header.pixel_spacing_mm == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert header.orientation == pytest.approx(tuple(float(v) for v in ds.ImageOrientationPatient))
    assert header.pixels == "native" and not header.truncated and not header.lossy


def test_cut_files_are_truncated_wherever_the_cut_is(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    for cut in (200, 600, len(data) - 8000):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        assert read_header(path).truncated, cut
    j2k = Path(get_testdata_file("693_J2KI.dcm")).read_bytes()
    (tmp_path / "j2k.dcm").write_bytes(j2k[:-500])
    header = read_header(tmp_path / "j2k.dcm")
    assert header.pixels == "encapsulated" and header.truncated and header.lossy
    assert read_header(get_testdata_file("MR_truncated.dcm")).truncated


def test_not_dicom_raises(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n" * 40)
    (tmp_path / "b.png").write_bytes(b"\x89PNG" + os.urandom(300))
    for name in ("a.txt", "b.png"):
        with pytest.raises(DicomError, match="not a DICOM file"):
            read_header(tmp_path / name)


def test_enhanced_geometry_comes_from_the_functional_groups(archive):
    header = read_header(archive[0] / "C" / "enhanced.dcm")
    assert header.frames == 3 and header.orientation == (1, 0, 0, 0, 1, 0)
    assert header.pixel_spacing_mm == (3.5, 3.5) and header.slice_thickness_mm == 5.0


def test_a_cut_inside_a_sequence_items_element_header_is_truncated(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = Dataset()
    item.add_new(0x00091010, "OB", b"\x01" * 64)  # a long-VR element inside an undefined-length item
    item.is_undefined_length_sequence_item = True
    ds.add_new(0x00091020, "SQ", Sequence([item]))
    ds[0x00091020].is_undefined_length = True
    full = tmp_path / "full.dcm"
    ds.save_as(full, enforce_file_format=True)
    data = full.read_bytes()
    ob = data.index(b"\x09\x00\x10\x10OB")  # the element's header: tag, VR, 2 reserved bytes, 4-byte length
    assert data[ob - 8 : ob] == b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # inside an undefined-length item
    assert parse_fast(data, len(data), open(full, "rb")) is not None  # the fast path reads the whole file
    for cut in range(ob + 1, ob + 12):  # every cut inside the 12-byte header
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        assert read_header(path).truncated, cut
