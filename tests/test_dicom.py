"""Tests for ctgen.io.dicom: pydicom's bundled real CT/MR files plus datasets built in fixtures."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless, UID, generate_uid,
)

import ctgen
from conftest import ct_small_compressed, gdcm_transcode, j2k_declaring
from dicom_build import functional_group
from ctgen.io.dicom import (
    AIR_HU, Slice, iter_dicom_files, read_frames, read_series, read_slice, write_series, write_slice,
)
from ctgen.errors import DicomError, InputError, OutputError

CT_SMALL = get_testdata_file("CT_small.dcm")
MR_SMALL = get_testdata_file("MR_small.dcm")
WRITE = dict(spacing_mm=(0.5, 0.5), description="test series", derivation="written by the tests")


def _save(ds: Dataset, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def _ct(stored: np.ndarray, **attributes) -> Dataset:
    """A minimal single-frame CT dataset around int16/uint16 stored values (H, W) or (F, H, W)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.PatientID = "CT", "1.2.3.4", "P1"
    bits = 8 * stored.dtype.itemsize
    ds.set_pixel_data(stored, "MONOCHROME2", bits, generate_instance_uid=False)
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def ct_small_hu() -> np.ndarray:
    return read_slice(CT_SMALL).hu


# ------------------------------------------------------------------------------ reading real files
def test_ct_small_reads_hu_and_header():
    one = read_slice(CT_SMALL)
    assert isinstance(one, Slice) and one.hu.dtype == np.float32 and one.hu.shape == (128, 128)
    assert one.modality == "CT" and one.spacing_mm == pytest.approx((0.661468, 0.661468))
    assert one.position_mm == pytest.approx((-158.135803, -179.035797, -75.699997))
    assert one.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and one.slice_thickness_mm == 5.0
    assert one.hu.min() < -800 and one.hu.max() > 300  # lung and vertebra
    assert one.path == CT_SMALL and one.series_uid and one.instance_number is not None


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_real_head_ct_in_jpeg2000_reads_plausible_hu(name):
    hu = read_slice(get_testdata_file(name)).hu
    assert hu.shape == (512, 512)
    air = hu[(hu > -1100) & (hu < -900)]
    assert air.size > 0.1 * hu.size and abs(np.median(air) + 1000) < 30
    assert 20 <= np.median(hu[280:320, 236:276]) <= 50  # brain
    assert (hu > 300).mean() > 0.01  # skull


def test_pixel_padding_of_real_file_becomes_air():
    path = get_testdata_file("693_J2KI.dcm")  # PixelPaddingValue -2000 (-3024 HU), lossy JPEG 2000
    stored, hu = pydicom.pixels.pixel_array(path), read_slice(path).hu
    assert (stored == -2000).sum() > 100 and (hu[stored == -2000] == AIR_HU).all()


@pytest.mark.parametrize("suffix", ["_RLE", "_bigendian", "_expb", "_implicit", "_jp2klossless",
                                    "_jpeg_ls_lossless"])
def test_every_bundled_mr_transfer_syntax_matches_uncompressed(suffix):
    reference = read_slice(MR_SMALL, allow_mr=True)
    other = read_slice(get_testdata_file(f"MR_small{suffix}.dcm"), allow_mr=True)
    assert other.modality == "MR"
    np.testing.assert_array_equal(other.hu, reference.hu)
    assert other.spacing_mm == reference.spacing_mm


def _compress_pydicom(tmp_path, syntax):
    ds = pydicom.dcmread(CT_SMALL)
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no encoder for {syntax.name}: {exc}")
    return _save(ds, tmp_path / "ct.dcm")


def _deflate(tmp_path, syntax):
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _save(ds, tmp_path / "ct.dcm")


def _gdcm(tmp_path, syntax):
    return gdcm_transcode(CT_SMALL, tmp_path / "ct.dcm", syntax)


@pytest.mark.parametrize("encode, syntax", [
    (_compress_pydicom, RLELossless), (_compress_pydicom, JPEG2000Lossless), (_deflate, None),
    (_gdcm, JPEGLSLossless), (_gdcm, JPEGLosslessSV1), (_gdcm, JPEGLossless),
], ids=["rle", "j2k-lossless", "deflate", "jpeg-ls-lossless", "jpeg-lossless-sv1", "jpeg-lossless"])
def test_ct_small_compressed_decodes_to_identical_hu(tmp_path, ct_small_hu, encode, syntax):
    path = encode(tmp_path, syntax)
    if syntax is not None:
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_slice(path).hu, ct_small_hu)


def test_jpeg_baseline_8bit_ct_decodes_close(tmp_path):
    rng = np.random.default_rng(0)
    stored = np.clip(128 + 40 * np.sin(np.arange(64) / 6)[:, None] + rng.normal(0, 2, (64, 64)), 0, 255)
    ds = _ct(stored.astype(np.uint8), RescaleSlope=8, RescaleIntercept=-1024)
    path = gdcm_transcode(_save(ds, tmp_path / "raw.dcm"), tmp_path / "jpeg.dcm", JPEGBaseline8Bit)
    hu = read_slice(path).hu
    assert np.abs(hu - (stored.astype(np.uint8) * 8.0 - 1024)).mean() < 8 * 3  # lossy, within a few levels


def test_12bit_jpeg_extended_names_the_gpl_extra(tmp_path):
    stored = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    ds = _ct(stored, BitsStored=12, HighBit=11)
    path = gdcm_transcode(_save(ds, tmp_path / "raw.dcm"), tmp_path / "jpeg12.dcm", JPEGExtended12Bit)
    try:
        hu = read_slice(path).hu  # only when pylibjpeg-libjpeg happens to be installed
    except DicomError as exc:
        assert "pip install 'ctgen[jpeg-gpl]'" in str(exc)
    else:
        np.testing.assert_array_equal(hu, stored - 1024.0)


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["SC_rgb_small_odd.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "examples_palette.dcm"])
def test_colour_images_are_refused_even_when_labelled_ct(tmp_path, name):
    with pytest.raises(DicomError):
        read_slice(get_testdata_file(name))
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.Modality = "CT"
    with pytest.raises(DicomError, match="colour"):
        read_slice(_save(ds, tmp_path / name))


def test_non_ct_is_refused_unless_mr_allowed():
    with pytest.raises(DicomError, match="modality MR is not CT"):
        read_slice(MR_SMALL)
    assert read_slice(MR_SMALL, allow_mr=True).modality == "MR"
    with pytest.raises(DicomError, match="modality NM is not CT"):
        read_slice(get_testdata_file("JPEG2000.dcm"), allow_mr=True)


def test_truncated_files_are_refused(tmp_path):
    with pytest.raises(DicomError, match="truncated"):
        read_slice(get_testdata_file("MR_truncated.dcm"), allow_mr=True)
    data = Path(CT_SMALL).read_bytes()
    for cut in (len(data) // 2, len(data) - 139):  # 138 bytes of trailing padding follow the pixels
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        with pytest.raises(DicomError, match="truncated"):
            read_slice(tmp_path / "cut.dcm")
    j2k = Path(get_testdata_file("693_J2KI.dcm")).read_bytes()
    (tmp_path / "cut_j2k.dcm").write_bytes(j2k[: len(j2k) - 100])
    with pytest.raises(DicomError, match="truncated"):
        read_slice(tmp_path / "cut_j2k.dcm")


def test_not_dicom_missing_and_imageless_files_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("This is not a DICOM file.\n" * 20)
    (tmp_path / "empty.dcm").write_bytes(b"")
    for path in (tmp_path / "notes.txt", tmp_path / "empty.dcm"):
        with pytest.raises(DicomError, match="not a DICOM file"):
            read_slice(path)
    with pytest.raises(DicomError, match="no such file"):
        read_slice(tmp_path / "missing.dcm")
    with pytest.raises(DicomError, match="not a file"):
        read_slice(tmp_path)
    with pytest.raises(DicomError, match="no pixel data"):
        read_slice(get_testdata_file("rtplan.dcm"))
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    with pytest.raises(DicomError, match="no pixel data"):
        read_slice(_save(ds, tmp_path / "no_pixels.dcm"))


def test_errors_are_one_line_and_name_the_file(tmp_path):
    path = tmp_path / "bad.dcm"
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # native bytes labelled as JPEG 2000
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    _save(ds, path)
    with pytest.raises(DicomError) as info:
        read_slice(path)
    assert info.value.path == str(path) and "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_headerless_dataset_is_read(tmp_path, ct_small_hu):
    ds = pydicom.dcmread(CT_SMALL)
    ds.preamble = None
    del ds.file_meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(tmp_path / "raw", ds, implicit_vr=False, little_endian=True)
    assert Path(tmp_path / "raw").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_slice(tmp_path / "raw").hu, ct_small_hu)


def test_reading_never_warns_or_prints(tmp_path, capfd):
    ds = pydicom.dcmread(CT_SMALL)
    ds.PixelData = ds.PixelData + b"\x00" * 16  # pydicom warns about excess pixel data
    path = _save(ds, tmp_path / "long.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_slice(path)
        read_slice(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
        with pytest.raises(DicomError):
            read_slice(get_testdata_file("MR_truncated.dcm"), allow_mr=True)
    assert capfd.readouterr() == ("", "")


_CT_BYTES = Path(CT_SMALL).read_bytes()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(_CT_BYTES)),
       flips=st.lists(st.tuples(st.integers(0, len(_CT_BYTES) - 1), st.integers(1, 255)), max_size=8))
def test_damaged_files_raise_only_dicom_error(tmp_path, cut, flips):
    data = bytearray(_CT_BYTES)
    for offset, mask in flips:
        data[offset] ^= mask
    path = tmp_path / "damaged.dcm"
    path.write_bytes(bytes(data[:cut]))
    try:
        one = read_slice(path)
    except DicomError:
        return
    assert one.hu.dtype == np.float32 and one.hu.ndim == 2


# ------------------------------------------------------------------------- synthetic variations
def test_monochrome1_keeps_hu_because_it_is_a_display_transform(tmp_path):
    stored = np.arange(-1024, 3072, 16, dtype=np.int16).reshape(16, 16)
    mono2 = read_slice(_save(_ct(stored), tmp_path / "m2.dcm")).hu
    mono1 = read_slice(_save(_ct(stored, PhotometricInterpretation="MONOCHROME1"), tmp_path / "m1.dcm")).hu
    np.testing.assert_array_equal(mono1, mono2)
    np.testing.assert_array_equal(mono1, stored - 1024.0)


def test_modality_lut_sequence_is_applied(tmp_path):
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4)
    ds = _ct(stored)
    del ds.RescaleIntercept, ds.RescaleSlope
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [16, 0, 16], [v * 10 for v in range(16)]
    item["LUTData"].VR = "US"
    ds.ModalityLUTSequence = Sequence([item])
    np.testing.assert_array_equal(read_slice(_save(ds, tmp_path / "lut.dcm")).hu, stored * 10.0)


def test_pixel_padding_value_and_range_become_air(tmp_path):
    stored = np.full((8, 8), 1064, np.int16)  # 40 HU
    stored[0] = -2000
    stored[1] = -1990
    plain = read_slice(_save(_ct(stored, PixelPaddingValue=-2000), tmp_path / "pad.dcm")).hu
    assert (plain[0] == AIR_HU).all() and (plain[1] == -3014).all() and (plain[2:] == 40).all()
    ranged = _ct(stored, PixelPaddingValue=-2000, PixelPaddingRangeLimit=-1990)
    assert (read_slice(_save(ranged, tmp_path / "range.dcm")).hu[:2] == AIR_HU).all()
    unsigned_label = _ct(stored)
    unsigned_label.add_new(0x00280120, "US", 65536 - 2000)  # signed value written with VR US
    assert (read_slice(_save(unsigned_label, tmp_path / "us.dcm")).hu[0] == AIR_HU).all()


def test_non_square_pixels_and_matrix(tmp_path):
    stored = np.zeros((12, 20), np.int16)
    one = read_slice(_save(_ct(stored, PixelSpacing=[0.5, 0.8]), tmp_path / "ns.dcm"))
    assert one.hu.shape == (12, 20) and one.spacing_mm == (0.5, 0.8)
    assert read_slice(_save(_ct(stored, PixelSpacing=[0, 1]), tmp_path / "bad.dcm")).spacing_mm is None


def test_enhanced_multiframe_rescale_from_per_frame_and_shared_groups(tmp_path):
    stored = np.stack([np.full((6, 5), v, np.int16) for v in (1000, 1100, 1200)])
    ds = _ct(stored)
    del ds.RescaleIntercept, ds.RescaleSlope
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SharedFunctionalGroupsSequence = Sequence([functional_group(
        PixelMeasuresSequence={"PixelSpacing": [0.4, 0.6], "SliceThickness": 1.5},
        PlaneOrientationSequence={"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]},
        PixelValueTransformationSequence={"RescaleIntercept": -1024, "RescaleSlope": 1, "RescaleType": "HU"},
        FrameVOILUTSequence={"WindowCenter": 40, "WindowWidth": 80})])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        functional_group(PlanePositionSequence={"ImagePositionPatient": [0, 0, 0]},
                          PixelValueTransformationSequence={"RescaleIntercept": -2048, "RescaleSlope": 2}),
        functional_group(PlanePositionSequence={"ImagePositionPatient": [0, 0, 1.5]}),
        functional_group(PlanePositionSequence={"ImagePositionPatient": [0, 0, 3]},
                          PixelValueTransformationSequence={"RescaleIntercept": -500, "RescaleSlope": 0.5},
                          FrameVOILUTSequence={"WindowCenter": 400, "WindowWidth": 2000})])
    path = _save(ds, tmp_path / "enhanced.dcm")
    frames = read_frames(path)
    assert [float(f.hu[0, 0]) for f in frames] == [1000 * 2 - 2048, 1100 - 1024, 1200 * 0.5 - 500]
    assert all(f.spacing_mm == (0.4, 0.6) and f.slice_thickness_mm == 1.5 for f in frames)
    assert [f.position_mm for f in frames] == [(0, 0, 0), (0, 0, 1.5), (0, 0, 3)]
    assert [f.window for f in frames] == [(40, 80), (40, 80), (400, 2000)]
    np.testing.assert_array_equal(read_slice(path, frame=2).hu, frames[2].hu)
    np.testing.assert_array_equal(read_slice(path).hu, frames[0].hu)
    with pytest.raises(DicomError, match="frame 3 out of range"):
        read_slice(path, frame=3)
    assert len(read_series(path)) == 3


def test_frame_out_of_range_on_single_frame_file():
    with pytest.raises(DicomError, match="out of range"):
        read_slice(CT_SMALL, frame=1)


# ------------------------------------------------------------------------------------------ series
def test_series_is_sorted_along_the_slice_normal(tmp_path):
    rng = np.random.default_rng(1)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(0.3), np.sin(0.3)])  # tilted gantry
    normal = np.cross(row, col)
    order = rng.permutation(6)
    positions = np.array([[10, 20, 5] + i * 2.5 * normal for i in order])
    hu = np.stack([np.full((4, 4), float(i)) for i in order])
    write_series(hu, tmp_path / "series", positions_mm=positions, orientation=(*row, *col), **WRITE)
    (tmp_path / "series" / "README.txt").write_text("not dicom")
    (tmp_path / "series" / ".hidden.dcm").write_text("hidden")
    slices = read_series(tmp_path / "series")
    assert [float(s.hu[0, 0]) for s in slices] == list(range(6))  # not the file order
    listed = sorted((tmp_path / "series").glob("0*.dcm"))
    assert [float(s.hu[0, 0]) for s in read_series(listed)] == list(range(6))


def test_series_without_geometry_falls_back_to_instance_number(tmp_path):
    write_series(np.stack([np.full((4, 4), float(i)) for i in range(3)]), tmp_path, sop_class="sc",
                 filename_pattern="{number}.dcm", **WRITE)
    slices = read_series([tmp_path / "3.dcm", tmp_path / "1.dcm", tmp_path / "2.dcm"])
    assert [s.instance_number for s in slices] == [1, 2, 3] and slices[0].position_mm is None


def test_iter_dicom_files_is_recursive_sorted_and_skips_non_dicom(tmp_path):
    for name in ("b/2.dcm", "a/1.dcm", "a/.cache/x.dcm", "c/README", "c/DICOMDIR"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "c" / "IM0001").write_bytes(b"\0" * 128 + b"DICM")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_dicom_files(tmp_path)]
    assert found == ["a/1.dcm", "b/2.dcm", "c/IM0001"]
    assert list(iter_dicom_files([tmp_path / "c" / "README"])) == [tmp_path / "c" / "README"]
    with pytest.raises(DicomError, match="no such file"):
        list(iter_dicom_files(tmp_path / "nothing"))
    with pytest.raises(DicomError, match="no DICOM files"):
        read_series([])


# ------------------------------------------------------------------------------------------ writing
def test_write_then_read_round_trips_within_half_a_hu(tmp_path):
    rng = np.random.default_rng(2)
    hu = rng.uniform(-1024, 3000, (3, 24, 32)).astype(np.float32)
    paths = write_series(hu, tmp_path, spacing_mm=(0.45, 0.6), description="d", derivation="r", window=(35, 90))
    assert [p.name for p in paths] == ["0000.dcm", "0001.dcm", "0002.dcm"]
    slices = read_series(tmp_path)
    np.testing.assert_allclose(np.stack([s.hu for s in slices]), hu, atol=0.5)
    assert all(s.spacing_mm == (0.45, 0.6) and s.window == (35, 90) for s in slices)
    assert slices[0].orientation == (1, 0, 0, 0, 1, 0)
    assert [s.position_mm[2] for s in slices] == pytest.approx([0, 0.525, 1.05])
    assert slices[0].patient_id == "ANONYMOUS" and len({s.series_uid for s in slices}) == 1
    extreme = read_slice(write_slice(np.array([[-1e6, 1e6]]), tmp_path / "x.dcm", **WRITE)).hu
    assert extreme.tolist() == [[-32768 - 1024, 32767 - 1024]]


def test_full_range_images_offer_the_bone_window_after_the_chosen_one(tmp_path):
    wide = write_slice(np.array([[-1000.0, 1500.0]]), tmp_path / "wide.dcm", **{**WRITE, "window": (40, 80)})
    ds = pydicom.dcmread(wide)
    assert [float(v) for v in ds.WindowCenter] == [40, 75, 600] and [float(v) for v in ds.WindowWidth] == [80, 215, 2800]
    assert list(ds.WindowCenterWidthExplanation) == ["BRAIN", "SUBDURAL", "BONE"]
    assert read_slice(wide).window == (40, 80)  # a reader (and a viewer) opens with the first
    narrow = pydicom.dcmread(write_slice(np.array([[0.0, 60.0]]), tmp_path / "n.dcm", **{**WRITE, "window": (40, 80)}))
    assert float(narrow.WindowCenter) == 40 and narrow.WindowCenterWidthExplanation == "BRAIN"


def test_written_attributes_and_provenance(tmp_path):
    paths = write_series(np.zeros((2, 8, 8)), tmp_path, extra_comments="model default (sha256 abc)", **WRITE)
    first, second = (pydicom.dcmread(p) for p in paths)
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and first.Modality == "CT"
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.PixelRepresentation == 1 and first.BitsStored == 16 and first.pixel_array.dtype == np.int16
    assert (first.RescaleIntercept, first.RescaleSlope) == (-1024, 1) and int(first.pixel_array[0, 0]) == 1024
    assert first.PatientIdentityRemoved == "YES" and first.DeidentificationMethod
    assert first.DerivationDescription == f"ctgen {ctgen.__version__}: written by the tests"
    assert "written by the tests" in first.ImageComments and "sha256 abc" in first.ImageComments
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    again = pydicom.dcmread(write_slice(np.zeros((8, 8)), tmp_path / "again.dcm", study_uid="1.2.3.4", **WRITE))
    assert again.StudyInstanceUID == "1.2.3.4" and again.SeriesInstanceUID != first.SeriesInstanceUID
    sc = pydicom.dcmread(write_slice(np.zeros((8, 8)), tmp_path / "sc.dcm", sop_class="sc", **WRITE))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and "ImagePositionPatient" not in sc


def test_output_carries_no_identifier_of_the_input(tmp_path):
    secrets = {"PatientName": "Quokkason^Wilhelmina", "PatientID": "MRN-99887766",
               "PatientBirthDate": "19520317",
               "AccessionNumber": "ACC-5566-77", "InstitutionName": "Saint Zebulon Hospital",
               "ReferringPhysicianName": "Doctor^Xylophone", "StudyDescription": "ZEBRA-QUOKKA-7731",
               "OtherPatientIDs": "OTHER-ID-31337", "StudyDate": "19991231", "DeviceSerialNumber": "SN-424242"}
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in secrets.items():
        setattr(ds, keyword, value)
    uids = [str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                        "FrameOfReferenceUID")]
    one = read_slice(_save(ds, tmp_path / "patient.dcm"))
    assert one.patient_id == "MRN-99887766"  # available in memory for patient splits
    paths = write_series(one.hu, tmp_path / "out", spacing_mm=one.spacing_mm, positions_mm=[one.position_mm],
                         orientation=one.orientation, description="reconstruction", derivation="encode/decode")
    paths.append(write_slice(one.hu, tmp_path / "out" / "sc.dcm", sop_class="sc", **WRITE))
    for path in paths:
        data = path.read_bytes()
        for value in [*secrets.values(), *uids, "Quokkason", "Wilhelmina", "Xylophone"]:
            assert value.encode() not in data, (path, value)


def _dicom3tools_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("sop_class", ["ct", "sc"])
def test_written_files_pass_dciodvfy(tmp_path, sop_class):
    options = {**WRITE, "description": "Ünïcode \\ description, " * 8, "derivation": "ü" * 2000}
    paths = write_series(np.zeros((2, 16, 12)), tmp_path, sop_class=sop_class, patient_name="Phantom^Ünïcode",
                         extra_comments="line one\nline two", **options)
    for path in paths:
        assert _dicom3tools_errors(path) == []


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmdump (dcmtk) not installed")
def test_written_files_reread_with_dcmdump(tmp_path):
    path = write_slice(np.zeros((16, 16)), tmp_path / "one.dcm", **WRITE)
    result = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "E:" not in result.stderr
    assert "(0012,0062) CS [YES]" in result.stdout and "DERIVED\\SECONDARY" in result.stdout


def test_existing_targets_are_kept_unless_forced(tmp_path):
    first = write_series(np.zeros((2, 8, 8)), tmp_path, **WRITE)
    before = [p.read_bytes() for p in first]
    with pytest.raises(OutputError, match="already exists"):
        write_series(np.ones((2, 8, 8)), tmp_path, **WRITE)
    assert [p.read_bytes() for p in first] == before
    first[0].unlink()
    with pytest.raises(OutputError, match="0001.dcm"):  # one existing target blocks the whole series
        write_series(np.ones((2, 8, 8)), tmp_path, **WRITE)
    assert not first[0].exists()
    with pytest.raises(OutputError):
        write_slice(np.ones((8, 8)), first[1], **WRITE)
    forced = write_series(np.full((2, 8, 8), 7.0), tmp_path, force=True, **WRITE)
    assert [read_slice(p).hu[0, 0] for p in forced] == [7.0, 7.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000.dcm", "0001.dcm"]  # no temp files left


@pytest.mark.parametrize("hu, options, match", [
    (np.full((4, 4), np.nan), {}, "NaN"),
    (np.zeros((2, 2, 4, 4)), {}, "shape"),
    (np.zeros((4, 4)), {"orientation": (1, 0, 0, 1, 0, 0)}, "orthogonal"),
    (np.zeros((4, 4)), {"spacing_mm": (0, 1)}, "positive"),
    (np.zeros((4, 4)), {"window": (40, 0)}, "width"),
    (np.zeros((4, 4)), {"sop_class": "mr"}, "sop_class"),
    (np.zeros((4, 4)), {"patient_id": "A\\B"}, "patient_id"),
    (np.zeros((4, 4)), {"study_uid": "not a uid"}, "UID"),
    (np.zeros((2, 4, 4)), {"positions_mm": [(0, 0, 0)]}, "positions_mm"),
    (np.zeros((2, 4, 4)), {"filename_pattern": "same.dcm"}, "distinct"),
    (np.zeros((2, 4, 4)), {"filename_pattern": "{slice}.dcm"}, "pattern"),
])
def test_bad_write_input_raises_input_error(tmp_path, hu, options, match):
    with pytest.raises(InputError, match=match):
        write_series(hu, tmp_path, **{**WRITE, **options})
    assert list(tmp_path.iterdir()) == []


def test_series_are_grouped_by_series_uid(tmp_path):
    first, second = (np.stack([np.full((4, 4), start + i) for i in range(2)]) for start in (10.0, 20.0))
    write_series(first, tmp_path / "a", series_uid="1.2.3.1", **WRITE)
    write_series(second, tmp_path / "b", series_uid="1.2.3.2", positions_mm=[(0, 0, -5), (0, 0, -10)], **WRITE)
    slices = read_series(tmp_path)
    assert [s.series_uid for s in slices] == ["1.2.3.1"] * 2 + ["1.2.3.2"] * 2
    assert [float(s.hu[0, 0]) for s in slices] == [10, 11, 21, 20]


def test_failed_write_removes_the_files_it_made(tmp_path, monkeypatch):
    calls = []
    original = pydicom.dcmwrite

    def failing(fh, ds, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        original(fh, ds, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", failing)
    with pytest.raises(OutputError, match="No space left"):
        write_series(np.zeros((3, 4, 4)), tmp_path, **WRITE)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_raises_output_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError):
        write_series(np.zeros((4, 4)), tmp_path / "file", **WRITE)
    (tmp_path / "folder.dcm").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_slice(np.zeros((4, 4)), tmp_path / "folder.dcm", force=True, **WRITE)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("bits_stored", [9, 12, 15, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_native_16bit_reading_matches_pydicom_including_unused_high_bits(tmp_path, syntax, bits_stored, signed):
    # random bytes put garbage above the stored high bit: pydicom clears (unsigned) or sign-extends (signed) it
    raw = np.random.default_rng(bits_stored).integers(0, 1 << 16, (3, 6, 5), dtype=np.uint16)
    ds = _ct(raw.view(np.int16) if signed else raw, RescaleSlope=0.5)
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.file_meta.TransferSyntaxUID = syntax
    path = _save(ds, tmp_path / "native.dcm")
    expected = pydicom.pixels.pixel_array(pydicom.dcmread(path)).astype(np.float64) * 0.5 - 1024
    frames = read_frames(path)
    np.testing.assert_array_equal(np.stack([f.hu for f in frames]), expected.astype(np.float32))
    np.testing.assert_array_equal(read_slice(path, frame=2).hu, frames[2].hu)


# ------------------------------------------------------------------ hostile headers (issue 15, items 1-4)
def _ct_small(path: Path, **attributes) -> Path:
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return _save(ds, path)


@pytest.fixture
def decoder_calls(monkeypatch) -> list:
    """Records every call of pydicom's pixel decoder made by the reader (it still decodes)."""
    import ctgen.io.dicom.read as reader

    calls: list = []
    decode = reader.pixel_array

    def recording(*args, **kwargs):
        calls.append(args)
        return decode(*args, **kwargs)

    monkeypatch.setattr(reader, "pixel_array", recording)
    return calls


@pytest.mark.parametrize("spacing", [["1e-5", "1e-5"], ["1e-300", "1e-300"], ["1e-320", "1e-320"], [-0.5, 0.5],
                                     [25, 25], ["NaN", 1], ["inf", "inf"], [0.5], [0.5, 0.5, 0.5]])
def test_implausible_pixel_spacing_is_refused_by_the_reader(tmp_path, spacing):  # item 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about NaN/inf in a DS
        path = _ct_small(tmp_path / "spacing.dcm", PixelSpacing=spacing)
    with pytest.raises(DicomError, match="implausible pixel spacing .*expected 0.05 to 20 mm"):
        read_slice(path)


def test_implausible_spacing_in_functional_groups_is_refused(tmp_path):  # item 1
    ds = _ct(np.zeros((2, 8, 8), np.int16), NumberOfFrames=2)
    ds.SharedFunctionalGroupsSequence = Sequence([functional_group(PixelMeasuresSequence={"PixelSpacing": [1e-5, 1e-5]})])
    with pytest.raises(DicomError, match="implausible pixel spacing 1e-05 x 1e-05 mm"):
        read_frames(_save(ds, tmp_path / "enhanced.dcm"))


def test_spacings_at_the_plausible_limits_are_read(tmp_path):  # item 1
    for spacing in ((0.05, 0.05), (20.0, 20.0), (0.05, 20.0)):
        assert read_slice(_ct_small(tmp_path / "edge.dcm", PixelSpacing=list(spacing))).spacing_mm == spacing


@pytest.mark.parametrize("rows_columns", [(32768, 32768), (8193, 8192)])
def test_rle_header_beyond_the_pixel_limit_is_refused_before_decoding(tmp_path, decoder_calls, rows_columns):  # item 2
    rows, columns = rows_columns
    ds = ct_small_compressed(RLELossless, Rows=rows, Columns=columns)
    path = _save(ds, tmp_path / "rle.dcm")
    assert path.stat().st_size < 64_000
    with pytest.raises(DicomError, match=f"{columns} x {rows} pixels exceeds the limit of 67,108,864 decoded pixels"):
        read_slice(path)
    assert decoder_calls == []


def test_jpeg2000_header_beyond_the_limit_is_refused_before_decoding(tmp_path, decoder_calls):  # item 2
    path = _save(ct_small_compressed(JPEG2000Lossless, j2k_declaring(16384), Rows=16384, Columns=16384),
                 tmp_path / "big.dcm")
    with pytest.raises(DicomError, match="16384 x 16384 pixels exceeds the limit"):
        read_slice(path)
    assert decoder_calls == []


def test_codestream_declaring_another_size_is_refused_before_decoding(tmp_path, decoder_calls):  # item 2
    path = _save(ct_small_compressed(JPEG2000Lossless, j2k_declaring(16384)), tmp_path / "lies.dcm")
    with pytest.raises(DicomError, match="codestream declares 16384 x 16384 pixels, the header 128 x 128"):
        read_slice(path, max_pixels=1 << 30)  # a raised limit does not let the codestream through
    assert decoder_calls == []


def test_jpeg_frame_header_declaring_another_size_is_refused(tmp_path, decoder_calls):  # item 2
    path = gdcm_transcode(CT_SMALL, tmp_path / "jpeg.dcm", JPEGLossless)
    ds = pydicom.dcmread(path)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    sof = frame.index(b"\xff\xc3")  # lossless, Huffman: length, precision, then height and width
    frame[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    ds.PixelData = encapsulate([bytes(frame)])
    with pytest.raises(DicomError, match="codestream declares 30000 x 30000 pixels, the header 128 x 128"):
        read_slice(_save(ds, tmp_path / "lies.dcm"))
    assert decoder_calls == []


def test_jpeg2000_labelled_as_jpeg_is_refused_without_decoder_output(tmp_path, capfd, decoder_calls):  # items 2, 4
    ds = ct_small_compressed(JPEG2000Lossless)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit  # GDCM printed "Not a JPEG file", then Pillow decoded junk
    with pytest.raises(DicomError, match="not a JPEG Baseline .* codestream \\(it starts with ff 4f ff 51\\)"):
        read_slice(_save(ds, tmp_path / "mislabelled.dcm"))
    assert decoder_calls == [] and capfd.readouterr() == ("", "")


def test_pixel_limit_overrides(tmp_path, monkeypatch):  # item 2: parameter, setting, environment
    from ctgen.io.dicom import MAX_PIXELS_DEFAULT, max_pixels, set_max_pixels

    assert max_pixels() == MAX_PIXELS_DEFAULT == 1 << 26
    with pytest.raises(DicomError, match="128 x 128 pixels exceeds the limit of 16,383"):
        read_slice(CT_SMALL, max_pixels=128 * 128 - 1)
    assert read_slice(CT_SMALL, max_pixels=128 * 128).hu.shape == (128, 128)
    monkeypatch.setenv("CTGEN_MAX_PIXELS", "1000")
    assert max_pixels() == 1000
    with pytest.raises(DicomError, match="limit of 1,000 decoded pixels \\(raise it with --max-pixels or CTGEN_MAX_PIXELS\\)"):
        read_slice(CT_SMALL)
    try:
        set_max_pixels(128 * 128)  # the setting wins over the environment
        assert read_slice(CT_SMALL).hu.shape == (128, 128)
    finally:
        set_max_pixels(None)
    monkeypatch.setenv("CTGEN_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="CTGEN_MAX_PIXELS: must be a positive whole number"):
        read_slice(CT_SMALL)
    for bad in (0, -5, 2.5, True, "many"):
        with pytest.raises(InputError):
            set_max_pixels(bad)


def test_pixel_limit_counts_every_frame_that_is_decoded(tmp_path):  # item 2
    path = _save(_ct(np.zeros((4, 16, 16), np.int16), NumberOfFrames=4), tmp_path / "frames.dcm")
    assert read_slice(path, frame=3, max_pixels=256).hu.shape == (16, 16)
    with pytest.raises(DicomError, match="16 x 16 pixels x 4 frames exceeds the limit of 1,000"):
        read_frames(path, max_pixels=1000)


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path):  # item 2
    ds = pydicom.dcmread(CT_SMALL)
    ds.add_new(0x00091010, "LO", "ctgen tests")  # private creator, then 20 MiB of zeros
    ds.add_new(0x00091011, "OB", bytes(20 << 20))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = _save(ds, tmp_path / "bomb.dcm")
    assert path.stat().st_size < 100_000
    with pytest.raises(DicomError, match="deflated dataset inflates beyond 16,781,216 bytes"):
        read_slice(path, max_pixels=1000)
    assert read_slice(path).hu.shape == (128, 128)  # within the default limit it is just a large file


@pytest.mark.parametrize("keyword, value", [("RescaleSlope", "NaN"), ("RescaleSlope", "inf"), ("RescaleSlope", "1e39"),
                                            ("RescaleSlope", "0"), ("RescaleIntercept", "NaN"),
                                            ("RescaleIntercept", "-inf"), ("RescaleIntercept", "1e39")])
@pytest.mark.parametrize("where", ["top level", "functional group"])
def test_unusable_rescale_is_refused(tmp_path, keyword, value, where):  # item 3
    stored = np.full((2, 6, 5), 1000, np.int16)
    ds = _ct(stored, NumberOfFrames=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about NaN/inf in a DS
        if where == "top level":
            setattr(ds, keyword, value)
        else:
            rescale = {"RescaleIntercept": -1024, "RescaleSlope": 1, keyword: value}
            ds.SharedFunctionalGroupsSequence = Sequence([functional_group(PixelValueTransformationSequence=rescale)])
        path = _save(ds, tmp_path / "rescale.dcm")
    message = "RescaleSlope 0" if value == "0" else "beyond float32" if value == "1e39" else f"invalid {keyword}"
    with pytest.raises(DicomError, match=message):
        read_frames(path)


def test_usable_rescales_still_read(tmp_path):  # item 3: empty slope is 1, negative and tiny slopes are numbers
    stored = np.full((6, 5), 1000, np.int16)
    for slope, expected in (("", 1000 - 1024), (-1, -1000 - 1024), (1e-3, 1 - 1024)):
        hu = read_slice(_save(_ct(stored, RescaleSlope=slope), tmp_path / "ok.dcm")).hu
        assert np.allclose(hu, expected) and np.isfinite(hu).all()


def test_decoder_stderr_is_captured_into_the_one_error(tmp_path, capfd):  # item 4
    def cut(frame: bytearray) -> bytearray:
        return frame[: len(frame) // 2]  # GDCM's OpenJPEG prints "Tile part length size inconsistent ..."

    path = _save(ct_small_compressed(JPEG2000Lossless, cut), tmp_path / "cut.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DicomError, match="cannot decode JPEG 2000"):
            read_slice(path)
    assert capfd.readouterr() == ("", "")


def test_native_stderr_capture_keeps_other_threads_python_output(capfd):  # item 4
    import sys
    import threading

    from ctgen.runtime.native_stderr import captured_native_stderr

    with captured_native_stderr() as captured:
        os.write(2, b"decoder noise\n")
        writer = threading.Thread(target=lambda: print("ctgen: skipped other.dcm: reason", file=sys.stderr))
        writer.start()
        writer.join()
    assert captured() == "decoder noise\n"
    assert capfd.readouterr().err == "ctgen: skipped other.dcm: reason\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_a_damaged_element_length_allocates_nothing(tmp_path):  # item 2, found by the fuzz test
    import resource

    path = tmp_path / "long.dcm"  # an element after the pixel data claims 3.75 GiB
    path.write_bytes(Path(CT_SMALL).read_bytes() + b"\x09\x00\x01\x10OB\x00\x00" + (0xF0000000).to_bytes(4, "little")
                     + bytes(16))
    limit = 2 * 2**30  # Python allocates what a read asks for: 3.75 GiB would be a MemoryError here
    reader = "import sys; from ctgen.io.dicom import read_slice; print(read_slice(sys.argv[1]).hu.shape)"
    result = subprocess.run([sys.executable, "-c", reader, str(path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert (result.returncode, result.stdout.strip()) == (0, "(128, 128)"), result.stderr[-2000:]


def test_large_files_are_read_through_reads_clamped_to_the_file(tmp_path, monkeypatch, ct_small_hu):  # item 2
    import ctgen.io.dicom.limits as limits

    monkeypatch.setattr(limits, "_IN_MEMORY_BYTES", 0)  # as if every file were larger than 64 MiB
    with limits.bounded_reader(Path(CT_SMALL)) as stream:
        assert isinstance(stream, limits._BoundedReader)
        stream.seek(-10, os.SEEK_END)
        assert len(stream.read(1 << 40)) == 10  # an unclamped read would allocate a terabyte first
    np.testing.assert_array_equal(read_slice(CT_SMALL).hu, ct_small_hu)
