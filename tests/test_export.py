"""export: ONNX graphs from a checkpoint, strict validation, the model card."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from ctgen.errors import ModelError, OutputError  # noqa: E402
from ctgen.runtime.model import incomplete_card_fields, sha256_file  # noqa: E402
from export import onnx_export  # noqa: E402
from export.onnx_export import (  # noqa: E402
    DecoderGraph,
    EncoderGraph,
    ExportError,
    check_graph,
    export_graph,
    export_model,
    graph_specs,
    load_checkpoint,
    parity_feeds,
    resolve_checkpoint,
    validate_parity,
)

SPECS = graph_specs(64, 8)


@pytest.fixture(scope="module")
def tiny_vae(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)[1]


@pytest.fixture(scope="module")
def feeds(tiny_vae):
    return parity_feeds(tiny_vae, 64, 8, seed=0)


def _card(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.json").read_text())


def _graphs(model_dir: Path) -> dict[str, Path]:
    return {"encoder": model_dir / "encoder.onnx", "decoder": model_dir / "decoder.onnx"}


def _modules(vae, order=None) -> dict:
    return {"encoder": EncoderGraph(vae, order=order).eval(), "decoder": DecoderGraph(vae, order=order).eval()}


# ------------------------------------------------------------------------------- the exported folder
def test_tiny_export_passes_validation(tiny_model_dir, tiny_vae, feeds):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["decoder.onnx", "encoder.onnx", "model.json"]
    for name, spec in SPECS.items():
        model = check_graph(tiny_model_dir / spec.filename, spec, opset=18)
        assert not any(node.metadata_props for node in model.graph.node)  # debug metadata stripped
    order = _card(tiny_model_dir)["units"]["network_unit"]
    figures = validate_parity(_graphs(tiny_model_dir), _modules(tiny_vae, order), SPECS, feeds, tolerance=1e-4)
    assert set(figures) == {"encoder", "decoder"}
    assert max(d for outputs in figures.values() for d in outputs.values()) <= 1e-4


def test_graphs_have_dynamic_batch_and_named_io(tiny_model_dir):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_model_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape == ["N", 1, 64, 64]
    assert [o.name for o in session.get_outputs()] == ["mu", "logvar"]
    for batch in (1, 5, 40):
        mu, logvar = session.run(None, {"image": np.zeros((batch, 1, 64, 64), np.float32)})
        assert mu.shape == logvar.shape == (batch, 8)


def test_card_checksums_match_files(tiny_model_dir):
    card = _card(tiny_model_dir)
    assert set(card["files"]) == {"encoder.onnx", "decoder.onnx"}
    for name, entry in card["files"].items():
        assert entry["sha256"] == sha256_file(tiny_model_dir / name)
        assert entry["bytes"] == (tiny_model_dir / name).stat().st_size


def test_card_is_complete(tiny_model_dir, tiny_checkpoint):
    card = _card(tiny_model_dir)
    assert incomplete_card_fields(card) == []
    assert (card["format"], card["card_version"], card["name"]) == ("ctgen-model", 1, "tiny")
    assert (card["image_size"], card["spacing_mm"], card["window_hu"], card["latent_size"]) == (64, 3.75, [-50.0, 250.0], 8)
    assert card["beta"] == 4.0 and card["capacity"] is None and "squared error" in card["reconstruction_loss"]
    assert card["architecture"]["parameters"]["total"] == sum(
        v.numel() for k, v in torch.load(tiny_checkpoint, weights_only=True)["model"].items()
        if "running" not in k and "num_batches" not in k)
    training = card["training"]
    assert training["command"].startswith("python -m train --data data/phantom")
    assert (training["patients"], training["slices"], training["split"]["val_patients"]) == (4, 40, 1)
    assert "split_patients" not in json.dumps(card)  # hashed patient ids stay out of the card
    assert training["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)
    export = card["export"]
    assert export["opset"] == 18 and export["exporter"] == "torch.onnx.export(dynamo=True)"
    assert export["torch"] == torch.__version__ and export["onnx"] == onnx.__version__
    assert export["parity"]["tolerance"] == 1e-4
    assert export["parity"]["random_batch_sizes"] == [1, 3, 16]
    assert set(export["parity"]["max_abs_diff"]["encoder"]) == {"mu", "logvar"}
    metrics = card["metrics"]
    assert metrics["units_by_kl"] == list(range(8)) and metrics["kl_source"] == "checkpoint"  # exported by KL
    assert _card(tiny_model_dir)["units"]["network_unit"] == [1, 5, 3, 7, 0, 6, 2, 4]
    assert metrics["kl_per_unit"] == sorted(metrics["kl_per_unit"], reverse=True)  # unit 0 the most informative
    assert metrics["active_units"] == 6 and metrics["recon_mae_hu"] == 42.0
    assert card["graphs"]["decoder"] == {"file": "decoder.onnx", "inputs": {"z": ["N", 8]},
                                         "outputs": {"image": ["N", 1, 64, 64]}, "dtype": "float32"}


# ------------------------------------------------------------------------------- broken graphs
def _edit(source: Path, target: Path, change) -> Path:
    model = onnx.load(str(source))
    change(model)
    onnx.save(model, str(target))
    return target


def test_wrong_output_name_is_rejected(tiny_model_dir, tmp_path):
    def rename(model):
        old = model.graph.output[1].name
        for node in model.graph.node:
            node.output[:] = ["log_var" if name == old else name for name in node.output]
        model.graph.output[1].name = "log_var"

    broken = _edit(tiny_model_dir / "encoder.onnx", tmp_path / "encoder.onnx", rename)
    with pytest.raises(ExportError, match=r"output names \['mu', 'log_var'\], expected \['mu', 'logvar'\]") as info:
        check_graph(broken, SPECS["encoder"])
    assert str(broken) in str(info.value) and "\n" not in str(info.value)


def test_wrong_output_shape_is_rejected(tiny_model_dir, tmp_path):
    def shrink(model):
        model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 32

    broken = _edit(tiny_model_dir / "decoder.onnx", tmp_path / "decoder.onnx", shrink)
    with pytest.raises(ExportError, match=r"shape inference|\[N, 1, 64, 32\]"):
        check_graph(broken, SPECS["decoder"])


def test_fixed_batch_axis_and_wrong_dtype_are_rejected(tiny_model_dir, tmp_path):
    def fix_batch_and_retype(model):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # no longer dynamic
        model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE

    broken = _edit(tiny_model_dir / "decoder.onnx", tmp_path / "decoder.onnx", fix_batch_and_retype)
    with pytest.raises(ExportError) as info:
        check_graph(broken, SPECS["decoder"])
    assert "input 'z' has dtype float64, expected float32" in str(info.value)
    assert "input 'z' has shape [1, 8], expected [N, 8]" in str(info.value)


def test_wrong_opset_and_garbage_file_are_rejected(tiny_model_dir, tmp_path):
    with pytest.raises(ExportError, match="opset 18, expected 19"):
        check_graph(tiny_model_dir / "encoder.onnx", SPECS["encoder"], opset=19)
    garbage = tmp_path / "encoder.onnx"
    garbage.write_bytes(b"not a graph")
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        check_graph(garbage, SPECS["encoder"])


def test_parity_failure_lists_every_output_in_one_error(tiny_model_dir, tiny_vae, feeds, tmp_path):
    def perturb(model):
        for tensor in model.graph.initializer:
            if tensor.dims and tensor.dims[0] == 16:  # the encoder's final linear layer (2L = 16 rows)
                values = onnx.numpy_helper.to_array(tensor) + np.float32(0.05)
                tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))

    graphs = {"encoder": _edit(tiny_model_dir / "encoder.onnx", tmp_path / "encoder.onnx", perturb),
              "decoder": tiny_model_dir / "decoder.onnx"}
    with pytest.raises(ExportError) as info:
        validate_parity(graphs, _modules(tiny_vae), SPECS, feeds, tolerance=1e-4)
    message = str(info.value)
    assert "fp32 parity check failed (tolerance 0.0001)" in message
    for label in ("encoder.onnx mu", "encoder.onnx logvar", "decoder.onnx image"):
        assert label in message
    assert "\n" not in message


# ------------------------------------------------------------------------------- exporters
def test_torchscript_exporter_gives_the_same_graph_contract(tiny_vae, feeds, tmp_path):
    path = tmp_path / "encoder.onnx"
    used = export_graph(EncoderGraph(tiny_vae), torch.rand(2, 1, 64, 64), path, SPECS["encoder"], dynamo=False)
    assert used == "torchscript"
    check_graph(path, SPECS["encoder"], opset=18)
    validate_parity({"encoder": path}, _modules(tiny_vae), SPECS, feeds, tolerance=1e-4)


def test_dynamo_failure_falls_back_to_torchscript(tiny_vae, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_breaks(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    path = tmp_path / "decoder.onnx"
    used = export_graph(DecoderGraph(tiny_vae), torch.randn(2, 8), path, SPECS["decoder"])
    assert used == "torchscript (dynamo failed: dynamo: simulated dynamo failure)"
    check_graph(path, SPECS["decoder"])


def test_fp16_graph_keeps_float32_io_and_passes_loose_parity(tiny_vae, feeds, tmp_path):
    import copy

    half = copy.deepcopy(tiny_vae).half().eval()
    path = tmp_path / "decoder_fp16.onnx"
    assert export_graph(DecoderGraph(half, half=True), torch.randn(2, 8), path, SPECS["decoder"]) == "dynamo"
    model = check_graph(path, SPECS["decoder"], opset=18)  # float32 IO is part of the check
    assert {t.data_type for t in model.graph.initializer if len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}
    figures = validate_parity({"decoder": path}, _modules(tiny_vae), SPECS, feeds, tolerance=2e-2, label="fp16")
    assert 0 < figures["decoder"]["image"] <= 2e-2


@pytest.mark.slow
def test_fp16_export_writes_validated_cuda_only_graphs(tiny_checkpoint, tmp_path):
    out = export_model(tiny_checkpoint, tmp_path / "tiny16", fp16=True)
    card = _card(out)
    assert incomplete_card_fields(card) == []
    for graph in ("encoder", "decoder"):
        fp16_name = card["graphs"][graph]["fp16_file"]
        assert fp16_name == f"{graph}_fp16.onnx"
        assert card["files"][fp16_name]["precision"] == "fp16"
        assert card["files"][fp16_name]["providers"] == ["CUDAExecutionProvider"]
        assert card["files"][fp16_name]["sha256"] == sha256_file(out / fp16_name)
        assert (out / fp16_name).stat().st_size < 0.6 * (out / f"{graph}.onnx").stat().st_size
    parity = card["export"]["parity_fp16"]
    assert parity["tolerance"] == 2e-2 and "CUDAExecutionProvider only" in parity["note"]
    assert max(d for outputs in parity["max_abs_diff"].values() for d in outputs.values()) <= 2e-2


# ------------------------------------------------------------------------------- the folder, the CLI
def test_refuses_existing_out_without_force(tiny_checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="exists"):
        export_model(tiny_checkpoint, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_validation_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    def always_fails(*args, **kwargs):
        raise ExportError(tmp_path, "simulated validation failure")

    monkeypatch.setattr(onnx_export, "check_graph", always_fails)  # fails right after the first graph
    out = tmp_path / "tiny"
    with pytest.raises(ExportError, match="simulated"):
        export_model(tiny_checkpoint, out)
    assert list(tmp_path.iterdir()) == []  # no folder, no staging leftovers


def test_run_folder_means_its_best_checkpoint(tiny_checkpoint, tmp_path):
    assert resolve_checkpoint(tiny_checkpoint.parent) == (tiny_checkpoint, tiny_checkpoint.parent)
    with pytest.raises(ModelError, match="checkpoint_best.pt: missing"):
        resolve_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot be loaded as a checkpoint"):
        load_checkpoint(bad)
    torch.save({"model": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(ModelError, match="lacks config"):
        load_checkpoint(tmp_path / "nocfg.pt")


def test_real_slices_enter_the_parity_check(tiny_model_dir, tiny_vae):
    pydicom_data = pytest.importorskip("pydicom.data")
    from ctgen.images.preprocess import Grid
    from export.onnx_export import load_validation_images

    images = load_validation_images(pydicom_data.get_testdata_file("CT_small.dcm"), Grid(size=64, spacing_mm=3.75))
    assert images.shape == (1, 1, 64, 64) and images.dtype == np.float32 and images.max() > 0
    feeds = parity_feeds(tiny_vae, 64, 8, seed=0, real_images=images)
    assert len(feeds["encoder"]) == len(feeds["decoder"]) == 4
    order = _card(tiny_model_dir)["units"]["network_unit"]
    validate_parity(_graphs(tiny_model_dir), _modules(tiny_vae, order), SPECS, feeds, tolerance=1e-4)


def test_validation_slices_come_through_scan_and_the_one_slice_path(tiny_model_dir, enhanced, volume, tmp_path):
    """export's real slices are those the runtime reads: scan's usable files (a multi-frame DICOM file and a NIfTI
    volume here; a truncated file and a text file left out), each file's middle slice, on the same model grid
    and in the same model units as ``Generator.load`` gives them (issue 22: one reader)."""
    import shutil

    import ctgen
    from ctgen.images.preprocess import Grid
    from export.onnx_export import load_validation_images

    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(enhanced, archive / "enhanced.dcm")
    shutil.copy(volume, archive / "head.nii.gz")
    (archive / "cut.dcm").write_bytes(enhanced.read_bytes()[:2000])
    (archive / "notes.txt").write_text("not a slice")
    generator = ctgen.load_generator(tiny_model_dir, device="cpu")
    images = load_validation_images(archive, Grid.from_card(generator.model.card))
    expected = np.stack([generator.load(archive / name).image for name in ("enhanced.dcm", "head.nii.gz")])
    assert images.shape == (2, 1, *expected.shape[1:])
    np.testing.assert_allclose(images[:, 0], expected, atol=1e-6)


def test_cli_error_is_one_line_and_exit_1(tiny_checkpoint, tmp_path, capsys):
    from export.__main__ import main

    (tmp_path / "out").mkdir()
    assert main([str(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--force" in err


@pytest.mark.slow
def test_cli_exports_and_same_checkpoint_gives_same_bytes(tiny_checkpoint, tiny_model_dir, tmp_path):
    out = tmp_path / "again"
    result = subprocess.run([sys.executable, "-m", "export", str(tiny_checkpoint.parent), "--out", str(out),
                             "--name", "tiny"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "parity: max |ORT - PyTorch|" in result.stderr
    card, original = _card(out), _card(tiny_model_dir)
    assert card["files"] == original["files"]
    assert card["export"]["command"] == f"python -m export {tiny_checkpoint.parent} --out {out} --name tiny"
    shutil.rmtree(out)


# ------------------------------------------------------------------------------- decoders and losses of issue 26
@pytest.mark.parametrize("upsample", ["resize", "subpixel"])
def test_resize_and_subpixel_decoders_export_and_validate(tiny_checkpoint, tmp_path, upsample):
    """The ONNX graph of each decoder passes the export's parity check; the card names the decoder's stages
    and the training losses the checkpoint records."""
    from dataclasses import asdict

    from train.checkpoint import save_checkpoint
    from train.config import TrainConfig
    from train.losses import ImageLoss
    from train.model import BetaVAE, VAEConfig

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    torch.manual_seed(0)
    config = VAEConfig(**{**checkpoint["config"], "upsample": upsample})
    vae = BetaVAE(config)
    vae.train()
    vae(torch.rand(4, 1, 64, 64))  # BatchNorm statistics away from their defaults: the folding is exercised
    train_config = TrainConfig(image_size=64, width=8, latent=8, upsample=upsample, recon="l1", ssim_weight=0.1,
                               adv_weight=0.01, adv_start=100)  # fmt: skip
    checkpoint |= {"config": asdict(config), "model": vae.state_dict(), "train": asdict(train_config),
                   "loss": {**checkpoint["loss"], "losses": ImageLoss(train_config, device=torch.device("cpu")).record()}}
    (tmp_path / "run").mkdir()
    save_checkpoint(checkpoint, tmp_path / "run" / "checkpoint_best.pt")
    out = export_model(tmp_path / "run" / "checkpoint_best.pt", tmp_path / "model", fp16=upsample == "subpixel")
    card = _card(out)
    decoder_ops = {node.op_type for node in onnx.load(out / "decoder.onnx").graph.node}
    assert ("Resize" if upsample == "resize" else "DepthToSpace") in decoder_ops and "ConvTranspose" not in decoder_ops
    assert card["architecture"]["config"]["upsample"] == upsample
    assert {"resize": "nearest x2", "subpixel": "PixelShuffle"}[upsample] in card["architecture"]["summary"]
    losses = card["objective"]["losses"]
    assert losses["reconstruction"] == "l1" and losses["ms_ssim"]["scales"] == 3
    assert losses["adversarial"]["start_step"] == 100 and losses["focal_frequency"] is None
    assert card["training"]["config"]["upsample"] == upsample
    assert max(card["export"]["parity"]["max_abs_diff"]["decoder"].values()) < 1e-4
    assert (out / "decoder_fp16.onnx").is_file() == (upsample == "subpixel")  # the CUDA graphs pass their parity too
