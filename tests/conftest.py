"""Shared test set-up. Slow and GPU tests are deselected by pyproject's addopts."""

from __future__ import annotations

import os

# Keep test runs on 2 cores predictable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


# ------------------------------------------------------------------ tiny exported model (export helper)
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

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

from ctgen.preprocess import Grid
from export import export_model
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
with torch.no_grad():
    mu, logvar = vae.encode(torch.from_numpy(images))
    decoded = vae.decode(torch.from_numpy(z))
np.savez(root / "reference.npz", images=images, mu=mu.numpy(), logvar=logvar.numpy(), z=z, decoded=decoded.numpy())
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
    """PyTorch eval outputs of the tiny model: images (5,1,64,64) -> mu, logvar (5,8); z (5,8) -> decoded."""
    import numpy as np

    with np.load(_tiny_model_build / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model folder, for tests that corrupt or edit it."""
    import shutil

    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny"))


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
