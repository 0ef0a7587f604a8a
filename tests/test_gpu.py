"""Every CUDA path, on a real GPU: ``python -m pytest -m gpu tests/test_gpu.py`` (deselected by default).

bf16 autocast, channels_last, torch.compile, the slice cache kept on the GPU (and the pinned host path),
NCCL with DistributedDataParallel, torchrun, a 256² run, and ONNX Runtime's CUDA provider through
``ctgen.runtime.model.load_model`` (IO binding, fp16 graphs). Each test takes seconds on a GPU and skips without
CUDA; the ``ort_cuda`` tests also skip, saying so, when the installed onnxruntime has no CUDA provider
(the GPU machine's image has the CPU build: ``tests/gpu/acceptance.py --stage-ort`` stages the GPU one).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from train.train import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """4 patients x 4 slices: with a quarter held out, 12 training slices, 2 steps of 6 per epoch."""
    out = tmp_path_factory.mktemp("study")
    try:
        from train.phantom.study import generate_study
    except ImportError:
        from tests.test_train_data import write_synthetic_study

        return write_synthetic_study(out, patients=4, slices=4, size=512)
    generate_study(out, patients=4, slices=4, seed=0, workers=1, contact_sheet=False)
    return out


def tiny(study: Path, cache_root: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        data=[str(study)], out=str(out), cache=str(cache_root), image_size=64, width=8, latent=8, beta=1.0,
        epochs=1, batch_size=6, lr=3e-3, seed=0, val_fraction=0.25, workers=1, device="cuda", precision="bf16",
        quiet=True, tensorboard=False,
    )  # fmt: skip
    return replace(base, **changes)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def finite(value: float) -> bool:
    return bool(np.isfinite(value))


def small_vae(image_size: int = 64):
    from train.model import BetaVAE, VAEConfig

    torch.manual_seed(0)
    return BetaVAE(VAEConfig(image_size=image_size, latent_size=8, width=8)).cuda()


# ------------------------------------------------------------------------------------------ PyTorch
def test_bf16_autocast_steps_match_fp32():
    from train.model import vae_loss

    model = small_vae().to(memory_format=torch.channels_last)
    images = torch.rand(6, 1, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    noise = torch.randn(6, 8, device="cuda")
    with torch.no_grad():
        reference, _, _ = model(images, noise=noise)  # fp32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            recon, mu, logvar = model(images, noise=noise)
        if step == 0:
            assert mu.dtype == torch.bfloat16  # the encoder ran in bf16 ...
            assert recon.dtype == torch.float32  # ... the output layer in float32 (train.model)
            assert (recon - reference).abs().max().item() < 0.05
        loss = vae_loss(images, recon, mu, logvar, beta=1.0).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        assert finite(loss.item())


def test_channels_last_matches_contiguous():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = small_vae().eval()
        images = torch.rand(4, 1, 64, 64, device="cuda")
        noise = torch.randn(4, 8, device="cuda")
        with torch.no_grad():
            plain, mu_plain, _ = model(images, noise=noise)
            model.to(memory_format=torch.channels_last)
            assert model.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last)
            nhwc, mu_nhwc, _ = model(images.contiguous(memory_format=torch.channels_last), noise=noise)
        assert (plain - nhwc).abs().max().item() < 1e-4
        assert (mu_plain - mu_nhwc).abs().max().item() < 1e-4
    finally:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True


def test_train_on_cuda_bf16(study, cache_root, tmp_path):
    summary = train(tiny(study, cache_root, tmp_path / "run", epochs=2))
    logged = metrics(tmp_path / "run")
    assert [m["epoch"] for m in logged] == [1, 2]
    assert all(finite(m["train_loss"]) and finite(m["val_loss"]) for m in logged)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["device"] == "cuda:0" and config["train"]["precision"] == "bf16"
    assert summary["best_val_loss"] == min(m["val_loss"] for m in logged)


def test_compile_a_few_steps_matches_eager(study, cache_root, tmp_path):
    train(tiny(study, cache_root, tmp_path / "eager", precision="fp32"))
    train(tiny(study, cache_root, tmp_path / "compiled", precision="fp32", compile=True))
    eager, compiled = metrics(tmp_path / "eager")[0], metrics(tmp_path / "compiled")[0]
    assert finite(compiled["train_loss"]) and compiled["step"] == eager["step"] == 2
    assert abs(compiled["train_loss"] - eager["train_loss"]) <= 0.05 * abs(eager["train_loss"])


def _record_pin_memory(monkeypatch) -> list[int]:
    pinned: list[int] = []
    pin_memory = torch.Tensor.pin_memory

    def recording(tensor, *args, **kwargs):
        pinned.append(tensor.numel())
        return pin_memory(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", recording)
    return pinned


def test_slice_cache_stays_on_the_gpu(study, cache_root, tmp_path, monkeypatch):
    pinned = _record_pin_memory(monkeypatch)
    train(tiny(study, cache_root, tmp_path / "run"))
    assert pinned == []  # train() pins the host copy only when the cache does not go to the GPU
    assert finite(metrics(tmp_path / "run")[0]["val_loss"])


def test_slice_cache_pinned_on_the_host_when_the_gpu_is_full(study, cache_root, tmp_path, monkeypatch):
    pinned = _record_pin_memory(monkeypatch)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 1 << 30))
    train(tiny(study, cache_root, tmp_path / "run"))
    assert pinned == [16 * 64 * 64]  # every slice, copied to the GPU batch by batch
    assert finite(metrics(tmp_path / "run")[0]["val_loss"])


def test_train_256_two_steps(study, cache_root, tmp_path):
    train(tiny(study, cache_root, tmp_path / "run", image_size=256, width=32, latent=50))
    (logged,) = metrics(tmp_path / "run")
    assert logged["step"] == 2 and finite(logged["train_loss"]) and logged["images_per_s"] > 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["config"]["image_size"] == 256


# ------------------------------------------------------------------------------------------ NCCL, torchrun
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun's workers too
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


_NCCL_DDP = r"""
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from train.model import BetaVAE, VAEConfig, vae_loss

dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
assert dist.get_backend() == "nccl" and dist.get_world_size() == 1
torch.manual_seed(0)
model = DistributedDataParallel(BetaVAE(VAEConfig(image_size=64, latent_size=8, width=8)).cuda()
                                .to(memory_format=torch.channels_last), device_ids=[0])
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images = torch.rand(6, 1, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
for _ in range(3):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        recon, mu, logvar = model(images, noise=torch.randn(6, 8, device="cuda"))
    loss = vae_loss(images, recon, mu, logvar).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
total = torch.tensor([loss.item(), 1.0], device="cuda")
dist.all_reduce(total)
assert torch.isfinite(total).all() and total[1].item() == 1.0
dist.destroy_process_group()
print("nccl ok", loss.item())
"""


def test_ddp_nccl_one_process(tmp_path):
    # train.ddp starts no process group for a world of one, so NCCL itself is exercised directly here
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # fmt: skip
    result = _run([sys.executable, "-c", _NCCL_DDP], tmp_path, env)
    assert result.returncode == 0 and "nccl ok" in result.stdout, result.stderr[-3000:]


def _torchrun_train(study: Path, cache_root: Path, run: Path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "train", "--data", str(study), "--out", str(run), "--cache", str(cache_root),
               "--image-size", "64", "--width", "8", "--latent", "8", "--epochs", "1", "--batch-size", "6",
               "--val-fraction", "0.25", "--device", "cuda", "--precision", "bf16", "--quiet", "--no-tensorboard",
               "--workers", "1"]  # fmt: skip
    return _run(command, run.parent, env)


def test_torchrun_one_process_on_cuda(study, cache_root, tmp_path):
    result = _torchrun_train(study, cache_root, tmp_path / "run", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 1 and config["device"] == "cuda:0"
    assert finite(metrics(tmp_path / "run")[0]["val_loss"])


@pytest.mark.skipif(CUDA and torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: 2 GPUs")
def test_torchrun_two_gpus_nccl(study, cache_root, tmp_path):
    result = _torchrun_train(study, cache_root, tmp_path / "run", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["command"].startswith("torchrun --nproc_per_node=2")
    assert [m["epoch"] for m in metrics(tmp_path / "run")] == [1]


# ------------------------------------------------------------------------------------------ ONNX Runtime
def _require_ort_cuda() -> None:
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        pytest.skip(f"onnxruntime {onnxruntime.__version__} has no CUDA provider ({', '.join(providers)}): "
                    "install onnxruntime-gpu, or stage it on the GPU machine (tests/gpu/README.md)")


@pytest.fixture(scope="module")
def exported(study, cache_root, tmp_path_factory) -> Path:
    """A model trained one epoch on CUDA, exported with fp32 and fp16 graphs."""
    _require_ort_cuda()
    from export import export_model

    root = tmp_path_factory.mktemp("exported")
    train(tiny(study, cache_root, root / "run"))
    return export_model(root / "run", root / "model", fp16=True, validation_data=study)


def _reference(model_dir: Path) -> tuple:
    from ctgen.runtime.model import load_model

    cpu = load_model(model_dir, device="cpu")
    z = np.random.default_rng(0).standard_normal((16, cpu.latent_size)).astype(np.float32)
    images = cpu.decode(z)
    return z, images, (images, *cpu.encode(images))


def _check(model, z, images, reference, tolerance: float) -> None:
    decoded = model.decode(z)
    mu, logvar = model.encode(images)
    for got, want in zip((decoded, mu, logvar), reference):
        assert np.abs(got - want).max() <= tolerance * max(1.0, float(np.abs(want).max()))


def test_ort_cuda_fp32_io_binding(exported):
    from ctgen.runtime.model import load_model

    z, images, reference = _reference(exported)
    model = load_model(exported, device="cuda", precision="fp32")
    assert model.provider == "CUDAExecutionProvider"
    _check(model, z, images, reference, 1e-2)  # the CUDA provider may run fp32 convolutions as TF32
    for graph in ("encoder", "decoder"):
        session = model._sessions[graph]
        assert session.provider == "CUDAExecutionProvider" and session.use_io_binding
        assert "fp16" not in Path(session.path).name


def test_ort_cuda_fp16_graphs(exported):
    from ctgen.runtime.model import load_model

    z, images, reference = _reference(exported)
    model = load_model(exported, device="cuda")  # precision auto: the fp16 graphs on CUDA
    _check(model, z, images, reference, 2e-2)
    card = json.loads((exported / "model.json").read_text())
    for graph in ("encoder", "decoder"):
        assert Path(model._sessions[graph].path).name == card["graphs"][graph]["fp16_file"]


def test_ort_cuda_auto_device_picks_cuda(exported):
    from ctgen.runtime.model import load_model

    assert load_model(exported, device="auto").provider == "CUDAExecutionProvider"
