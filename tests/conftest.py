"""Shared test set-up: fixtures and helpers (tests import the helpers with ``from conftest import ...``).

Slow and GPU tests are deselected by pyproject's addopts.
"""

from __future__ import annotations

import os

# Keep test runs on 2 cores predictable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# ------------------------------------------------------------------ tiny exported model (export helper)
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import pytest  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ctgen.cli import app  # noqa: E402
from dicom_build import functional_group, gdcm_change_syntax  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs in a subprocess so that PyTorch never enters this test process through the fixture: CLI tests
# assert that `torch` stays out of sys.modules. Writes run/checkpoint_best.pt like train.train does,
# reference.npz (PyTorch eval outputs on fixed inputs) and exports models/tiny.
_BUILD_TINY_MODEL = r"""
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ctgen.images.preprocess import Grid
from export import export_model
from export.onnx_export import DecoderGraph, EncoderGraph, unit_order
from train.model import RECONSTRUCTION_LOSS, BetaVAE, VAEConfig

root = Path(sys.argv[1])
run = root / "run"
run.mkdir(parents=True)
torch.manual_seed(0)
config = VAEConfig(image_size=64, latent_size=8, width=8)
vae = BetaVAE(config)
generator = torch.Generator().manual_seed(1)
with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them into the convolutions is tested
    for module in vae.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
            module.weight.uniform_(0.8, 1.2, generator=generator)
            module.bias.uniform_(-0.1, 0.1, generator=generator)
vae.eval()
kl = [0.5, 3.0, 0.001, 1.2, 0.0, 2.2, 0.02, 0.7]
grid = Grid(size=64, spacing_mm=3.75)
checkpoint = {
    "format": "ctgen-train-checkpoint",
    "config": asdict(config),
    "model": vae.state_dict(),
    "epoch": 3,
    "step": 30,
    "best_val_loss": 123.4,
    "train": {"data": ["data/phantom"], "image_size": 64, "latent": 8, "width": 8, "beta": 4.0,
              "capacity_max": None, "epochs": 3, "batch_size": 16, "seed": 0},
    "loss": {"reconstruction": RECONSTRUCTION_LOSS, "beta": 4.0, "capacity": None, "active_unit_kl_nats": 0.01},
    "grid": grid.to_card(),
    "data": {"sources": ["data/phantom"], "files": 40, "skipped_files": 0, "patients": 4, "slices": 40,
             "split": {"seed": 0, "val_fraction": 0.25, "train_patients": 3, "val_patients": 1,
                       "train_slices": 30, "val_slices": 10},
             "split_patients": {"train_patients": ["aa", "bb", "cc"], "val_patients": ["dd"]}},
    "metrics": {"epoch": 3, "val_loss": 123.4, "val_recon": 100.0, "recon_mae_hu": 42.0, "kl_per_unit": kl,
                "units_by_kl": sorted(range(8), key=lambda u: -kl[u]), "active_units": 6},
    "command": "python -m train --data data/phantom --out runs/tiny --image-size 64 --latent 8 --width 8 --epochs 3",
    "versions": {"torch": str(torch.__version__)},
}
torch.save(checkpoint, run / "checkpoint_best.pt")
(run / "command.txt").write_text(checkpoint["command"] + "\n")

rng = np.random.default_rng(0)
images = rng.random((5, 1, 64, 64), dtype=np.float32)
z = rng.standard_normal((5, 8), dtype=np.float32)
# the export orders units by KL: the reference is the network seen through that order
order = unit_order(kl)
with torch.no_grad():
    mu, logvar = EncoderGraph(vae, order=order).eval()(torch.from_numpy(images))
    decoded = DecoderGraph(vae, order=order).eval()(torch.from_numpy(z))
np.savez(root / "reference.npz", images=images, mu=mu.numpy(), logvar=logvar.numpy(), z=z, decoded=decoded.numpy(),
         order=np.array(order))
export_model(run, root / "models" / "tiny", name="tiny",
             command="python -m export run --out models/tiny (tests/conftest.py)")
"""


@pytest.fixture(scope="session")
def _tiny_model_build(tmp_path_factory) -> Path:
    if importlib.util.find_spec("torch") is None:  # not importorskip: keep torch out of this process
        pytest.skip("torch is not installed")
    root = tmp_path_factory.mktemp("tiny_model")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", _BUILD_TINY_MODEL, str(root)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{result.stderr[-4000:]}")
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(_tiny_model_build) -> Path:
    """A tiny random β-VAE (64x64, latent 8, width 8) exported by ``export.export_model``: a model folder
    (encoder.onnx, decoder.onnx, model.json). Shared by the session: copy it before changing anything."""
    return _tiny_model_build / "models" / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint(_tiny_model_build) -> Path:
    """The training-style checkpoint (run/checkpoint_best.pt) that ``tiny_model_dir`` was exported from."""
    return _tiny_model_build / "run" / "checkpoint_best.pt"


@pytest.fixture(scope="session")
def tiny_reference(_tiny_model_build) -> dict:
    """PyTorch eval outputs of the tiny model in the exported unit order ("order": the network's unit behind each
    exported one): images (5,1,64,64) -> mu, logvar (5,8); z (5,8) -> decoded."""
    import numpy as np

    with np.load(_tiny_model_build / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model folder, for tests that corrupt or edit it."""
    import shutil

    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny"))


BINDING = {"units": [{"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 1.5, "std": 8.0},
                     {"unit": 1, "factor": "head_width_max_mm", "unit_of_measure": "mm", "mean": 140.0, "std": 6.0},
                     {"unit": 2, "factor": "ventricle_mm2", "unit_of_measure": "mm²", "mean": 300.0, "std": 100.0}],
           "source": "measured", "fraction": 1.0, "weight": 1.0}


@pytest.fixture
def bound_model(tiny_model_copy) -> str:
    """A copy of the tiny model whose card binds units 0-2 to measured factors (``BINDING``; model.json is not
    checksummed): whether a real bound model moves the factor is ctgen evaluate's question."""
    card_path = tiny_model_copy / "model.json"
    card = json.loads(card_path.read_text())
    card["binding"] = BINDING
    card_path.write_text(json.dumps(card))
    return str(tiny_model_copy)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes extra threads spin.

    Imports torch only in the modules that ask for it, so ctgen's torch-free checks stay honest.
    """
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ CLI helpers and fixtures
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # real CT, 128 x 128
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
DEFAULT_MODEL = REPO_ROOT / "models" / "default"

runner = CliRunner()


def invoke(*args, input: str | None = None, env: dict | None = None):
    """Run the app in-process (Typer's runner) with separate stdout and stderr."""
    return runner.invoke(app, [str(arg) for arg in args], input=input, env=env)


def head_hu(size: int = 160, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """A crude axial head: air, skull ring (~1000 HU), brain (~35 HU) with ventricles; float32 (size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + shift, size / 2 - shift / 2
    r = np.hypot((yy - cy) / (0.42 * size), (xx - cx) / (0.34 * size))
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < 1.0] = 1000.0
    hu[r < 0.9] = 35.0 + rng.normal(0, 4, (r < 0.9).sum())
    ventricles = np.hypot((yy - cy) / (0.1 * size), (xx - cx) / (0.05 * size)) < 1.0
    hu[ventricles] = 5.0
    return hu


def write_heads(folder: Path, count: int, *, size: int = 160, spacing_mm: float = 1.5) -> list[Path]:
    """``count`` head slices written with ctgen.io.dicom.write_series into ``folder``; returns the paths."""
    from ctgen.io.dicom import write_series

    hu = np.stack([head_hu(size, shift=2.0 * index, seed=index) for index in range(count)])
    return write_series(hu, folder, spacing_mm=(spacing_mm, spacing_mm), description="cli test heads",
                        derivation="tests/conftest.py", patient_id="PHANTOM-T", patient_name="PHANTOM")


def colour_file(folder: Path) -> Path:
    """pydicom's RGB test image relabelled as CT: must be refused for being colour."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    ds.Modality = "CT"
    path = folder / "colour.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def not_dicom(folder: Path) -> Path:
    path = folder / "notes.dcm"
    path.write_text("this is not a DICOM file\n")
    return path


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """A preprocessed-slice cache folder shared by one module's training runs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def heads(tmp_path_factory) -> list[Path]:
    """Six synthetic head slices (160 x 160 at 1.5 mm) in one folder."""
    return write_heads(tmp_path_factory.mktemp("heads"), 6)


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory) -> Path:
    """pydicom's two-frame enhanced CT eCT_Supplemental.dcm where pydicom-data holds it (it is not in the
    pydicom wheel and tests download nothing), else a two-frame enhanced CT file built the same way."""
    shipped = get_testdata_file("eCT_Supplemental.dcm", download=False)
    if shipped is not None:
        return Path(shipped)
    frames = np.stack([head_hu(160, shift=2.0 * k, seed=k) for k in range(2)])
    return _enhanced_ct(tmp_path_factory.mktemp("enhanced") / "slice.dcm", frames, 1.5, "ANON-E")


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A NIfTI volume of three axial head slices, 1.5 mm pixels, 5 mm apart (float HU, RAS)."""
    nibabel = pytest.importorskip("nibabel")

    hu = np.stack([head_hu(160, shift=2.0 * k, seed=k) for k in range(3)], axis=-1).transpose(1, 0, 2)
    path = tmp_path_factory.mktemp("nifti") / "head.nii.gz"
    nibabel.save(nibabel.Nifti1Image(hu.astype(np.float32), np.diag([1.5, 1.5, 5.0, 1.0])), str(path))
    return path


@pytest.fixture
def model(tiny_model_dir) -> str:
    return str(tiny_model_dir)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_error_line(result, *fragments: str, exit_code: int = 1) -> str:
    """Assert ``exit_code`` (1: bad input) with exactly one 'ctgen: error:' line on stderr holding every fragment."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ctgen: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def one_usage_line(result, *fragments: str) -> str:
    """Assert a usage error (exit 2) reported as one 'ctgen: error: --option: reason' line."""
    return one_error_line(result, *fragments, exit_code=2)


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------- subprocesses
_RUNNER = r"""
import json, os, sys
try:
    from ctgen.cli import main
    main(sys.argv[1:])
finally:
    with open(os.environ["CTGEN_TEST_MODULES"], "w") as handle:
        json.dump(sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")), handle)
"""


def run_ctgen(args, *, cwd: Path, input: str | None = None, env: dict | None = None, check_torch: bool = True,
              timeout: float = 120):
    """Run ctgen in a fresh interpreter; assert that PyTorch was never imported. Returns CompletedProcess."""
    modules_file = Path(cwd) / ".modules.json"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                               os.environ.get("PYTHONPATH")])),
                   "CTGEN_TEST_MODULES": str(modules_file), **(env or {})}
    command = [sys.executable, "-c", _RUNNER, *map(str, args)] if check_torch else \
        [sys.executable, "-m", "ctgen", *map(str, args)]
    result = subprocess.run(command, cwd=cwd, input=input, env=environment, capture_output=True, text=True,
                            timeout=timeout)
    if check_torch:
        assert json.loads(modules_file.read_text()) == [], "torch was imported"
        modules_file.unlink()
    return result


# ------------------------------------------------------------------------------------ a PACS-like archive
def _edit(path: Path, **attributes) -> Path:
    """Set header attributes of a written file in place (``None`` deletes one)."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return save_dicom(ds, path)


# --------------------------------------------------------------------- hostile DICOM files (issue 15)
def ct_small_compressed(syntax, mangle=None, **attributes) -> pydicom.Dataset:
    """pydicom's CT_small.dcm compressed with ``syntax`` (pydicom's encoders; skips the test without one).

    ``mangle(frame)`` edits the one codestream (a bytearray) in place or returns a new one; ``attributes``
    are set on the dataset afterwards (header values that lie about the codestream)."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(CT_SMALL)
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no encoder for {syntax.name}: {exc}")
    if mangle is not None:
        frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
        changed = mangle(frame)
        ds.PixelData = encapsulate([bytes(frame if changed is None else changed)])
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def gdcm_transcode(src, dst: Path, syntax) -> Path:
    """Re-encode with GDCM (``dicom_build.gdcm_change_syntax``); skips the test without GDCM or its encoder."""
    pytest.importorskip("gdcm")
    failed = gdcm_change_syntax(src, dst, syntax)
    if failed == "change":
        pytest.skip(f"GDCM cannot encode {syntax.name}")
    assert failed is None, f"GDCM could not {failed} the file"
    assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return dst


def j2k_declaring(size: int):
    """A ``mangle`` for ``ct_small_compressed``: the JPEG 2000 codestream's SIZ says size x size pixels."""
    import struct

    def mangle(frame: bytearray) -> None:
        assert frame[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: Xsiz and Ysiz follow Lsiz and Rsiz
        frame[8:16] = struct.pack(">II", size, size)

    return mangle


def save_dicom(ds: pydicom.Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (pydicom's warnings about odd values silenced); returns ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def _enhanced_ct(path: Path, hu: np.ndarray, spacing_mm: float, patient_id: str) -> Path:
    """An enhanced multi-frame CT file: frames (F, H, W) in HU, geometry and rescale in functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2.1", generate_uid()
    ds.Modality, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "CT", patient_id, "19600101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), generate_uid(), 7
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.set_pixel_data(np.rint(hu + 1024).astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    ds.SharedFunctionalGroupsSequence = Sequence([functional_group(
        PixelMeasuresSequence={"PixelSpacing": [spacing_mm, spacing_mm], "SliceThickness": 5.0},
        PlaneOrientationSequence={"ImageOrientationPatient": [1, 0, 0, 0, 1, 0]},
        PixelValueTransformationSequence={"RescaleIntercept": -1024, "RescaleSlope": 1, "RescaleType": "HU"})])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        functional_group(PlanePositionSequence={"ImagePositionPatient": [0, 0, 5.0 * index]}) for index in range(len(hu))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def write_archive(root: Path, *, size: int = 64, spacing_mm: float = 3.5) -> dict[str, str]:
    """A small PACS export with everything a real one holds; returns {path relative to root: expected reason}.

    A/ and B/ are two people whose IDs were anonymised to one value ("ANON"), with different studies, birth
    dates and sexes; C/ holds an enhanced multi-frame CT (3 frames). Beside their axial slices: a localizer,
    coronal and sagittal reformats, a copy of an instance without a file extension, the same instance
    RLE-encoded, a gantry-tilted slice and a 1024-matrix slice (both usable), and a folder of things that are
    not usable: an SR without pixels, an RGB screen capture, a colour image labelled CT, an MR slice, a
    truncated slice and a text file.
    """
    import shutil

    from pydicom.uid import RLELossless, generate_uid

    from ctgen.io.dicom import write_series

    expected: dict[str, str] = {}
    people = {"A": ("19500101", "M", 4), "B": ("19720505", "F", 3)}
    for folder, (birth, sex, count) in people.items():
        hu = np.stack([head_hu(size, shift=1.5 * index, seed=index + (10 if folder == "B" else 0))
                       for index in range(count)])
        paths = write_series(hu, root / folder / "ax", spacing_mm=spacing_mm, description=f"axial {folder}",
                             derivation="tests/conftest.py write_archive", patient_id="ANON", patient_name="ANON")
        for path in paths:
            _edit(path, PatientBirthDate=birth, PatientSex=sex, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
            expected[str(path.relative_to(root))] = "ok"
    first = root / "A" / "ax" / "0000.dcm"
    ds = pydicom.dcmread(first)
    study, birth, sex = ds.StudyInstanceUID, ds.PatientBirthDate, ds.PatientSex

    def extra(name: str, reason: str, hu: np.ndarray, pixel_mm: float, **attributes) -> Path:
        (path,) = write_series(hu[None], root / "A" / "extra", spacing_mm=pixel_mm, description=name,
                               derivation="tests/conftest.py write_archive", patient_id="ANON", patient_name="ANON",
                               study_uid=study, filename_pattern=f"{name}.dcm")
        _edit(path, PatientBirthDate=birth, PatientSex=sex, **attributes)
        expected[str(path.relative_to(root))] = reason
        return path

    one = head_hu(size, seed=3)
    extra("scout", "localizer", one, spacing_mm, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    extra("coronal", "not-axial", one, spacing_mm, ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    extra("sagittal", "not-axial", one, spacing_mm, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    tilt = np.radians(20.0)
    extra("tilted", "ok", one, spacing_mm, GantryDetectorTilt=20,
          ImageOrientationPatient=[1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))])
    extra("matrix1024", "ok", head_hu(1024, seed=4), size * spacing_mm / 1024)

    copy = root / "A" / "copy" / "IM0001"  # the same instance again, without a file extension
    copy.parent.mkdir(parents=True)
    shutil.copyfile(first, copy)
    expected[str(copy.relative_to(root))] = "duplicate"
    rle = root / "A" / "rle" / "0001.dcm"  # the same instance as ax/0001.dcm in another encoding
    rle.parent.mkdir(parents=True)
    ds = pydicom.dcmread(root / "A" / "ax" / "0001.dcm")
    ds.compress(RLELossless, generate_instance_uid=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(rle, enforce_file_format=True)
    expected[str(rle.relative_to(root))] = "duplicate"

    frames = np.stack([head_hu(size, shift=-1.0 * index, seed=20 + index) for index in range(3)])
    (root / "C").mkdir()
    _enhanced_ct(root / "C" / "enhanced.dcm", frames, spacing_mm, "ANON-C")
    expected["C/enhanced.dcm"] = "ok"

    other = root / "other"
    other.mkdir()
    report = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.save_as(other / "report.dcm", enforce_file_format=True)
    expected["other/report.dcm"] = "no-image"
    screen = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    screen.ConversionType = "WSD"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        screen.save_as(other / "screen.dcm", enforce_file_format=True)
    expected["other/screen.dcm"] = "secondary-capture"
    colour = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    colour.SOPClassUID = colour.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    colour.Modality, colour.SOPInstanceUID = "CT", generate_uid()
    colour.file_meta.MediaStorageSOPInstanceUID = colour.SOPInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        colour.save_as(other / "colour.dcm", enforce_file_format=True)
    expected["other/colour.dcm"] = "colour"
    shutil.copyfile(MR_SMALL, other / "mr.dcm")
    expected["other/mr.dcm"] = "not-ct"
    data = (root / "B" / "ax" / "0000.dcm").read_bytes()
    (other / "cut.dcm").write_bytes(data[: len(data) - 3000])
    expected["other/cut.dcm"] = "truncated"
    (other / "notes.txt").write_text("export log: 17 series\n")
    expected["other/notes.txt"] = "not-dicom"
    return expected


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``write_archive`` once per session: (root, {relative path: expected reason}). Do not modify."""
    root = tmp_path_factory.mktemp("archive")
    return root, write_archive(root)
