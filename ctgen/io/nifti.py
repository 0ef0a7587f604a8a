"""NIfTI volumes (``.nii``, ``.nii.gz``) as stacks of axial CT slices in Hounsfield units.

The public head-CT datasets (PhysioNet CT-ICH, converted CQ500) ship as NIfTI. A volume is reoriented by its
affine so that its slices are axial with DICOM's usual in-plane layout: rows run anterior to posterior,
columns right to left (the patient's left on the image's right), slices inferior to superior. Slice ``k`` of
a volume is named ``VOLUME#k`` (0-based, inferior first). Values are the stored values through the header's
scale slope and intercept (nibabel), taken as HU.

A JSON sidecar next to the volume (``scan.json`` beside ``scan.nii.gz``, as dcm2niix writes) may name the
DICOM values that the volume lost: PatientID, PatientBirthDate, PatientSex, StudyInstanceUID,
SeriesInstanceUID, SeriesNumber, SeriesDescription, Modality, ImageType, ConvolutionKernel. Without
one, each file is its own patient.

Reading checks the header before any voxel is read, against the limits the DICOM reader uses
(``ctgen.io.dicom.limits``): the voxel count against ``max_pixels`` (a whole volume counts, as all frames of a
multi-frame DICOM file do: a gzipped volume must be inflated whole), the bytes a ``.nii.gz`` inflates to
against what its header declares, the datatype, scaling, affine and in-plane spacing. A slice whose HU are not
all finite is refused. ``check_volume`` is the one check that ``ctgen scan`` and the reader share.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.io.dicom.limits import (
    HEADER_SLACK_BYTES,
    MAX_SIDECAR_BYTES,
    MAX_SIDECAR_NESTING,
    check_pixel_count,
)
from ctgen.io.dicom.validate import HU_LIMIT
from ctgen.errors import DicomError
from ctgen.images.geometry import axial_tilt_deg
from ctgen.images.preprocess import SPACING_RANGE_MM
from ctgen.io.regular_file import open_regular, read_regular

__all__ = ["NIFTI_SUFFIXES", "Volume", "check_volume", "is_nifti", "read_sidecar", "read_volume", "sidecar_path",
           "volume_header"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_AXIAL_CODES = ("P", "L", "S")  # array axes: rows to posterior, columns to the patient's left, slices up
_GZIP_MAGIC = b"\x1f\x8b"
_MAGIC = {348: b"n+1", 540: b"n+2"}  # header size -> the magic of a single-file volume
_CHUNK = 1 << 16


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a NIfTI file by its suffix (.nii or .nii.gz, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that belongs to a volume: scan.nii.gz -> scan.json."""
    path = Path(path)
    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]
    return path.with_name(stem + ".json")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The volume's JSON sidecar as a dict ({} when there is none).

    Raises DicomError naming the volume and the sidecar for one that is not a regular file, is larger than
    MAX_SIDECAR_BYTES, nests deeper than MAX_SIDECAR_NESTING, or is not a JSON object in UTF-8."""
    side = sidecar_path(path)

    def fail(reason: str) -> DicomError:
        return DicomError(path, f"sidecar {side.name}: {reason}")

    try:
        data = read_regular(side, MAX_SIDECAR_BYTES, DicomError)
    except FileNotFoundError:
        return {}
    except DicomError as error:
        raise fail(error.reason) from None
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise fail(f"nested deeper than {MAX_SIDECAR_NESTING} levels") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise fail(f"not valid JSON ({str(exc)[:80]})") from None
    if _nesting(value) > MAX_SIDECAR_NESTING:
        raise fail(f"nested deeper than {MAX_SIDECAR_NESTING} levels")
    if not isinstance(value, dict):
        raise fail(f"not a JSON object (a {type(value).__name__})")
    return value


def _nesting(value: Any) -> int:
    """Levels of lists and objects in a decoded JSON value (0 for a scalar), counted up to one past the limit."""
    depth, level = 0, [value]
    while depth <= MAX_SIDECAR_NESTING:
        containers = [item for item in level if isinstance(item, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return depth


@dataclass(frozen=True)
class Volume:
    """A volume's header, reoriented to an axial stack: ``shape`` (rows, columns, slices), ``spacing_mm``
    (row, column, slice), ``tilt_deg`` (angle between the slice normal and the head-foot axis), and the
    sidecar's values (``sidecar``). ``min_hu``: the lowest HU of the volume when its voxels were read
    (``check_volume``), else None."""

    path: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    tilt_deg: float
    sidecar: dict[str, Any]
    min_hu: float | None = None

    @property
    def slices(self) -> int:
        return self.shape[2]


@dataclass(frozen=True)
class _Layout:
    """Where a volume's voxels lie and how they become the axial stack."""

    compressed: bool
    offset: int  # bytes before the voxels (of the inflated stream, for .nii.gz)
    dtype: np.dtype
    stored_shape: tuple[int, int, int]  # as stored (Fortran order)
    slope: float
    intercept: float
    transform: np.ndarray  # nibabel orientation transform from the stored axes to rows, columns, slices
    affine: np.ndarray  # of the reoriented stack: voxel (row, column, slice) -> RAS mm

    @property
    def nbytes(self) -> int:
        return math.prod(self.stored_shape) * self.dtype.itemsize


def volume_header(path: str | os.PathLike, *, max_pixels: int | None = None) -> Volume:
    """Read and check a NIfTI header and its sidecar (no voxel data). Raises DicomError for a file that is
    not a single-file NIfTI-1 or NIfTI-2 volume of 2 or 3 dimensions, holds more than ``max_pixels`` voxels
    (None: ``ctgen.io.dicom.max_pixels()``), has a datatype other than integers or float32/64, a scaling that
    does not give finite HU, an affine without finite non-zero voxel axes, an in-plane spacing outside
    SPACING_RANGE_MM, is shorter than its header declares (uncompressed files), or has a bad sidecar."""
    return _inspect(path, max_pixels)[0]


def check_volume(path: str | os.PathLike, *, max_pixels: int | None = None) -> Volume:
    """What ``ctgen scan`` decides a volume by: ``volume_header``, and the voxels whenever they decide whether
    ``read_volume`` reads every slice (a gzipped or floating-point volume) or the sidecar names no modality;
    then ``min_hu`` holds the volume's lowest HU. Raises DicomError as ``read_volume`` of every slice would."""
    volume, layout = _inspect(path, max_pixels)
    if layout.compressed or layout.dtype.kind == "f" or not volume.sidecar.get("Modality"):
        lowest = math.inf
        for _, hu in _hu_slices(path, volume, layout, range(volume.slices)):
            lowest = min(lowest, float(hu.min()))
        volume = dataclasses.replace(volume, min_hu=lowest)
    return volume


def read_volume(path: str | os.PathLike, indices: list[int] | None = None, *,
                max_pixels: int | None = None) -> list:
    """Axial slices of a volume as ``ctgen.io.dicom.Slice`` objects (HU float32 (rows, columns), spacing in mm,
    LPS position and orientation as DICOM states them), inferior first; ``indices`` picks slices (0-based).

    Raises DicomError as ``volume_header`` does, and for an index out of range, voxel data that is cut short
    or corrupt, or a slice whose HU are not all finite (NaN or infinity).
    """
    from ctgen.io.dicom import Slice

    volume, layout = _inspect(path, max_pixels)
    wanted = list(range(volume.slices)) if indices is None else list(indices)
    for index in wanted:
        if not 0 <= index < volume.slices:
            raise DicomError(path, f"slice {index} out of range (the volume has {volume.slices} axial slices)")
    affine = layout.affine
    row_dir, col_dir = _unit(affine[:3, 1]), _unit(affine[:3, 0])  # along a row (columns), along a column (rows)
    orientation = tuple(float(v) for v in (*_lps(row_dir), *_lps(col_dir)))
    sidecar = volume.sidecar
    patient_id = str(sidecar.get("PatientID") or "")
    series_uid = str(sidecar.get("SeriesInstanceUID") or "")
    modality = str(sidecar.get("Modality") or "CT").upper()
    slices = []
    for index, hu in _hu_slices(path, volume, layout, wanted):
        position = tuple(float(v) for v in _lps(affine[:3, :3] @ np.array([0.0, 0.0, index]) + affine[:3, 3]))
        slices.append(Slice(hu=hu, spacing_mm=volume.spacing_mm[:2], path=f"{path}#{index}", modality=modality,
                            patient_id=patient_id, series_uid=series_uid, position_mm=position,
                            orientation=orientation, instance_number=index + 1,
                            slice_thickness_mm=volume.spacing_mm[2], window=None))
    return slices


# ------------------------------------------------------------------------------------------ the header
def _inspect(path, max_pixels: int | None) -> tuple[Volume, _Layout]:
    with _open(path) as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
        stream.seek(0)
        size = os.fstat(stream.fileno()).st_size
        prefix = _inflate(path, stream, 0, max(_MAGIC), exact=False) if compressed else stream.read(max(_MAGIC))
    header = _header(path, prefix)
    dims = [int(v) for v in header["dim"]]
    if not 1 <= dims[0] <= 7 or any(n < 1 for n in dims[1 : dims[0] + 1]):
        raise DicomError(path, f"bad dimensions {dims[1 : max(1, min(dims[0], 7)) + 1]} in the header")
    shape = tuple(dims[1 : dims[0] + 1])
    if len(shape) < 2 or any(n != 1 for n in shape[3:]):
        raise DicomError(path, f"not a 3-D volume (shape {shape})")
    stored_shape = (shape + (1,))[:3]
    check_pixel_count(path, stored_shape[1], stored_shape[0], stored_shape[2], max_pixels)
    dtype = _dtype(path, header)
    offset = _offset(path, header, len(header.binaryblock))
    nbytes = math.prod(stored_shape) * dtype.itemsize
    if not compressed and size < offset + nbytes:
        raise DicomError(path, f"truncated: the file holds {size:,} bytes, its header declares {offset + nbytes:,}")
    slope, intercept = _scaling(path, header, dtype)
    transform, affine = _orientation(path, header, stored_shape)
    with np.errstate(all="ignore"):
        spacing = tuple(float(np.linalg.norm(affine[:3, axis])) for axis in range(3))
    low, high = SPACING_RANGE_MM
    if not all(low <= s <= high for s in spacing[:2]):
        raise DicomError(path, f"implausible pixel spacing {spacing[0]:g} x {spacing[1]:g} mm (expected {low:g} "
                               f"to {high:g} mm)")
    tilt = axial_tilt_deg((*affine[:3, 0], *affine[:3, 1]))  # the voxel axes as row and column directions
    shape3 = tuple(_reoriented(np.broadcast_to(np.float32(0), stored_shape), transform).shape)
    volume = Volume(path=str(path), shape=shape3, spacing_mm=spacing, tilt_deg=tilt, sidecar=read_sidecar(path))
    layout = _Layout(compressed, offset, dtype, stored_shape, slope, intercept, transform, affine)
    return volume, layout


def _open(path):
    if not Path(path).exists():
        raise DicomError(path, "no such file")
    try:
        return open_regular(path, DicomError)
    except FileNotFoundError:
        raise DicomError(path, "no such file") from None


def _header(path, prefix: bytes):
    import nibabel

    for size, magic in _MAGIC.items():
        for order in "<>":
            if len(prefix) >= 4 and int(np.frombuffer(prefix[:4], f"{order}i4")[0]) == size:
                if len(prefix) < size:
                    raise DicomError(path, f"truncated: {len(prefix)} bytes, shorter than a NIfTI header ({size})")
                kind = nibabel.Nifti1Header if size == 348 else nibabel.Nifti2Header
                header = kind(binaryblock=prefix[:size], endianness=order, check=False)
                found = bytes(header["magic"]).rstrip(b"\x00")
                if found != magic:
                    pair = found in (b"ni1", b"ni2")
                    raise DicomError(path, "a NIfTI pair (.hdr/.img) is not supported" if pair
                                     else f"not a NIfTI file (magic {found[:8]!r})")
                return header
    raise DicomError(path, "not a NIfTI file (no NIfTI-1 or NIfTI-2 header size at its start)")


def _dtype(path, header) -> np.dtype:
    try:
        dtype = np.dtype(header.get_data_dtype())
    except Exception:  # noqa: BLE001 - nibabel raises KeyError or HeaderDataError for unknown codes
        raise DicomError(path, f"unknown datatype code {int(header['datatype'])}") from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8 or dtype.fields is not None:
        raise DicomError(path, f"datatype {dtype.name} is not supported (integers, float32 or float64)")
    return dtype


def _offset(path, header, header_size: int) -> int:
    value = float(header["vox_offset"])
    if not (math.isfinite(value) and value <= header_size + HEADER_SLACK_BYTES):
        raise DicomError(path, f"bad voxel offset {value:g} (expected up to {header_size + HEADER_SLACK_BYTES:,} "
                               "bytes)")
    return max(int(value), header_size + 4)  # as nibabel reads it: after the header and its extension flag


def _scaling(path, header, dtype: np.dtype) -> tuple[float, float]:
    slope, intercept = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or not math.isfinite(slope):  # the standard's "no scaling"
        return 1.0, 0.0
    if not math.isfinite(intercept):
        raise DicomError(path, f"invalid scl_inter {intercept} (not a finite number)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if abs(slope) * max(abs(int(info.min)), int(info.max)) + abs(intercept) > HU_LIMIT:
            raise DicomError(path, f"scaling {slope:g} x value + {intercept:g} gives HU beyond float32")
    return slope, intercept


def _orientation(path, header, stored_shape) -> tuple[np.ndarray, np.ndarray]:
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    try:
        with np.errstate(all="ignore"):
            affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a damaged qform or sform
        raise DicomError(path, "the header's affine (qform or sform) cannot be computed") from None
    with np.errstate(all="ignore"):  # huge values overflow to inf: refused below
        spacing = [float(np.linalg.norm(affine[:3, axis])) for axis in range(3)]
    if not np.isfinite(affine).all() or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DicomError(path, f"bad voxel size {tuple(spacing)}")
    try:
        with np.errstate(all="ignore"):
            transform = ornt_transform(io_orientation(affine), axcodes2ornt(_AXIAL_CODES))
            reoriented = affine @ inv_ornt_aff(transform, stored_shape)
    except Exception:  # noqa: BLE001 - degenerate axes
        raise DicomError(path, "the header's affine has no orientation (its voxel axes are degenerate)") from None
    if not np.isfinite(reoriented).all() or sorted(int(v) for v in transform[:, 0]) != [0, 1, 2]:
        raise DicomError(path, "the header's affine has no orientation (its voxel axes are degenerate)")
    return transform, reoriented


def _reoriented(stored: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """A view of the stored array as rows, columns, slices (flips and a transpose: no copy)."""
    from nibabel.orientations import apply_orientation

    return apply_orientation(stored, transform)


# ------------------------------------------------------------------------------------------ the voxels
def _hu_slices(path, volume: Volume, layout: _Layout, indices):
    """(index, HU float32 (rows, columns)) of each slice of ``indices``, checked finite."""
    stack = _stack(path, layout)
    for index in indices:
        with np.errstate(over="ignore", invalid="ignore"):
            hu = stack[:, :, index].astype(np.float64)
            if layout.slope != 1.0 or layout.intercept != 0.0:
                hu = hu * layout.slope + layout.intercept
            hu = np.ascontiguousarray(hu, dtype=np.float32)
            finite = np.isfinite(hu.sum(dtype=np.float64))  # one pass; NaN or inf anywhere make the sum so
        if not finite:
            bad = int(np.count_nonzero(~np.isfinite(hu)))
            if bad:
                raise DicomError(path, f"slice {index} holds {bad:,} voxels that are not finite numbers "
                                       "(NaN or infinity)")
        yield index, hu


def _stack(path, layout: _Layout) -> np.ndarray:
    """The voxels as stored values, viewed as rows, columns, slices (no copy of the data read)."""
    with _open(path) as stream:
        if layout.compressed:
            data = _inflate(path, stream, layout.offset, layout.nbytes)
        else:
            stream.seek(layout.offset)
            data = np.empty(layout.nbytes, np.uint8)
            if stream.readinto(memoryview(data)) != layout.nbytes:
                raise DicomError(path, "truncated: the file ends inside its voxel data")
    stored = np.frombuffer(data, dtype=layout.dtype, count=math.prod(layout.stored_shape))
    return _reoriented(stored.reshape(layout.stored_shape, order="F"), layout.transform)


def _inflate(path, stream, start: int, count: int, *, exact: bool = True):
    """Bytes ``start`` to ``start + count`` of a gzip stream (any number of members), inflated in chunks: never
    more than ``start + count`` bytes are inflated. A uint8 array; with ``exact`` False, bytes when the stream
    ends sooner; with ``exact``, DicomError then."""
    out = np.empty(count, np.uint8)
    produced = filled = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = b""
    try:
        while filled < count:
            if not pending:
                pending = stream.read(_CHUNK)
                if not pending:
                    if not exact:
                        return out[:filled].tobytes()
                    raise DicomError(path, f"truncated: the compressed data ends after {start + filled:,} of "
                                           f"the {start + count:,} bytes its header declares")
            chunk = inflater.decompress(pending, min(1 << 20, start + count - produced))
            pending = inflater.unconsumed_tail
            if inflater.eof:  # another gzip member may follow
                pending = inflater.unused_data
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            skip = min(len(chunk), max(0, start - produced))
            take = min(len(chunk) - skip, count - filled)
            out[filled : filled + take] = np.frombuffer(chunk, np.uint8, count=take, offset=skip)
            filled += take
            produced += len(chunk)
    except zlib.error as exc:
        raise DicomError(path, f"corrupt gzip data ({exc})") from None
    return out if exact else out.tobytes()


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _lps(ras: np.ndarray) -> np.ndarray:
    """RAS (NIfTI) coordinates or directions to LPS (DICOM)."""
    return np.array([-ras[0], -ras[1], ras[2]], dtype=np.float64)
