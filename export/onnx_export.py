"""Checkpoint -> ONNX encoder and decoder graphs, validated against PyTorch, plus the model card.

Each graph is exported from a small wrapper module in eval mode under no_grad with named inputs and
outputs, a dynamic batch axis "N" and a fixed opset, by ``torch.onnx.export(dynamo=True)`` (the TorchScript
exporter only if dynamo fails; the card says which). Graphs are single self-contained files with the
exporter's per-node debug metadata (stack traces, FX names) removed, so they are small and the same
checkpoint gives the same bytes.

Every graph is validated before the folder is renamed into place (``export.validate``: structural
checks, then parity with PyTorch in ONNX Runtime); the validation names are re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ctgen.errors import CtgenError, ModelError, OutputError
from ctgen.evaluation.metrics.activity import units_by_kl as unit_order  # the exported order: highest KL first
from ctgen.runtime.model import CARD_FILE
from ctgen.images.preprocess import Grid
from export import card as card_module
from export.validate import (  # re-exported: the graph contract and its checks live in export.validate
    BATCH_DIM,
    MAX_VALIDATION_SLICES,
    TOLERANCE_FP16,
    TOLERANCE_FP32,
    VALIDATION_BATCH_SIZES,
    ExportError,
    GraphSpec,
    _first_line,
    check_graph,
    graph_specs,
    load_validation_images,
    parity_feeds,
    validate_parity,
)
from train.checkpoint import load_checkpoint_verified
from train.model import BetaVAE, VAEConfig

__all__ = [
    "BATCH_DIM",
    "OPSET",
    "TOLERANCE_FP16",
    "TOLERANCE_FP32",
    "VALIDATION_BATCH_SIZES",
    "DecoderGraph",
    "EncoderGraph",
    "ExportError",
    "GraphSpec",
    "check_graph",
    "export_graph",
    "export_model",
    "graph_specs",
    "load_checkpoint",
    "load_validation_images",
    "resolve_checkpoint",
    "bound_first_order",
    "unit_order",
    "validate_parity",
]

OPSET = 18
CHECKPOINT_IN_RUN = "checkpoint_best.pt"


def bound_first_order(kl: Sequence[float], bound: int = 0) -> list[int]:
    """The exported unit order: the ``bound`` units bound at training (network units 0..bound-1) keep their
    places and order, the free units follow by decreasing ``kl`` (the network's per-unit KL)."""
    free = unit_order(np.asarray(kl, dtype=np.float64)[bound:])
    return list(range(bound)) + [bound + unit for unit in free]


class EncoderGraph(nn.Module):
    """image float32 (N, 1, S, S) -> (mu, logvar) float32 (N, L). ``half``: fp16 inside, fp32 at the boundary.

    ``order``: exported unit k is the network's unit ``order[k]`` (a permutation; None keeps the network's order).
    """

    def __init__(self, vae: BetaVAE, *, half: bool = False, order: Sequence[int] | None = None):
        super().__init__()
        self.vae = vae
        self.half_precision = half
        self.register_buffer("order", None if order is None else torch.as_tensor(list(order), dtype=torch.long))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.vae.encode(image.half() if self.half_precision else image)
        if self.order is not None:
            mu, logvar = mu.index_select(1, self.order), logvar.index_select(1, self.order)
        return (mu.float(), logvar.float()) if self.half_precision else (mu, logvar)


class DecoderGraph(nn.Module):
    """z float32 (N, L) -> image float32 (N, 1, S, S) in [0, 1]. ``half``: fp16 inside, fp32 at the boundary.

    ``order``: as EncoderGraph's; the decoder takes exported units and hands the network its own order.
    """

    def __init__(self, vae: BetaVAE, *, half: bool = False, order: Sequence[int] | None = None):
        super().__init__()
        self.vae = vae
        self.half_precision = half
        inverse = None if order is None else torch.argsort(torch.as_tensor(list(order), dtype=torch.long))
        self.register_buffer("inverse", inverse)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.inverse is not None:
            z = z.index_select(1, self.inverse)
        if self.half_precision:
            return self.vae.decode(z.half()).float()
        return self.vae.decode(z)


def _wrappers(vae: BetaVAE, *, half: bool = False, order: Sequence[int] | None = None) -> dict[str, nn.Module]:
    return {"encoder": EncoderGraph(vae, half=half, order=order).eval(),
            "decoder": DecoderGraph(vae, half=half, order=order).eval()}


# ------------------------------------------------------------------------------------------ checkpoint
def resolve_checkpoint(run_or_checkpoint: str | os.PathLike) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None). A folder means its ``checkpoint_best.pt``. Raises ModelError."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        checkpoint = path / CHECKPOINT_IN_RUN
        if not checkpoint.is_file():
            raise ModelError(checkpoint, "missing: the run folder has no best checkpoint")
        return checkpoint, path
    if not path.is_file():
        raise ModelError(path, "no such checkpoint or run folder")
    run_dir = path.parent if (path.parent / "metrics.jsonl").is_file() or (path.parent / "config.json").is_file() else None
    return path, run_dir


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], BetaVAE]:
    """(checkpoint dict, BetaVAE in eval mode on the CPU), loaded with ``weights_only=True`` after its sha256
    sidecar (when it has one) is checked (``train.checkpoint.load_checkpoint_verified``). Raises ModelError."""
    checkpoint = load_checkpoint_verified(path)
    try:
        vae = BetaVAE.from_checkpoint(checkpoint)
    except Exception as exc:
        raise ModelError(path, f"model cannot be rebuilt from the checkpoint ({_first_line(exc)})") from None
    return checkpoint, vae.float().eval()


def checkpoint_grid(checkpoint: dict[str, Any], config: VAEConfig, path: str | os.PathLike | None = None) -> Grid:
    """The checkpoint's model grid; its size must match the network's. Raises ModelError."""
    if not checkpoint.get("grid"):
        raise ModelError(path, "the checkpoint has no grid (image_size, spacing_mm, window_hu)")
    try:
        grid = Grid.from_card(checkpoint["grid"])
    except CtgenError as exc:
        raise ModelError(path, f"bad grid in the checkpoint ({exc})") from None
    if grid.size != config.image_size:
        raise ModelError(path, f"checkpoint grid size {grid.size} != network image_size {config.image_size}")
    return grid


# ------------------------------------------------------------------------------------------ export
def export_graph(module: nn.Module, example: torch.Tensor, path: Path, spec: GraphSpec, *, opset: int = OPSET,
                 dynamo: bool = True) -> str:
    """Export ``module`` (one input, ``spec``'s outputs) to ``path`` as one self-contained file.

    Returns the exporter used: "dynamo", or "torchscript" when dynamo failed (or ``dynamo=False``),
    with dynamo's error appended. Raises ExportError when no exporter succeeds.
    """
    (input_name,) = spec.inputs
    output_names = list(spec.outputs)
    module = module.eval()
    errors = []
    if dynamo:
        try:
            with _quiet_exporter(), torch.no_grad():
                batch = torch.export.Dim(BATCH_DIM, min=1, max=1 << 20)
                program = torch.onnx.export(
                    module, (example,), None, input_names=[input_name], output_names=output_names,
                    dynamic_shapes={input_name: {0: batch}}, opset_version=opset, dynamo=True,
                    external_data=False, optimize=True, verbose=False,
                )
            model = program.model_proto
        except Exception as exc:
            errors.append(f"dynamo: {_first_line(exc)}")
        else:
            _save_graph(model, path, spec)
            return "dynamo"
    buffer = io.BytesIO()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                module, (example,), buffer, input_names=[input_name], output_names=output_names,
                dynamic_axes={name: {0: BATCH_DIM} for name in (input_name, *output_names)},
                opset_version=opset, dynamo=False,
            )
    except Exception as exc:
        errors.append(f"torchscript: {_first_line(exc)}")
        raise ExportError(path, f"export failed ({'; '.join(errors)})") from None
    _save_graph(onnx.load_from_string(buffer.getvalue()), path, spec)
    return "torchscript" + (f" (dynamo failed: {errors[0]})" if errors else "")


def _save_graph(model: onnx.ModelProto, path: Path, spec: GraphSpec) -> None:
    """Strip debug metadata, pin the IO shapes the exporter left symbolic, save as one file."""
    for node in _all_nodes(model.graph):
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        del value.metadata_props[:]
        value.doc_string = ""
    del model.metadata_props[:]
    model.doc_string = ""
    model.graph.doc_string = ""
    for value, shape in _io_pairs(model, spec):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue  # left for check_graph to report
        for dim, expected in zip(dims, shape):
            if isinstance(expected, str):
                dim.Clear()
                dim.dim_param = expected
            elif not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = expected
    model.graph.name = spec.name
    onnx.save_model(model, os.fspath(path), save_as_external_data=False)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_nodes(subgraph)


def _io_pairs(model: onnx.ModelProto, spec: GraphSpec) -> Iterator[tuple[onnx.ValueInfoProto, tuple]]:
    for values, expected in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        for value in values:
            if value.name in expected:
                yield value, expected[value.name]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters print progress to stdout and log/warn about unrelated things; keep our output clean."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------ the folder
def export_model(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    opset: int = OPSET,
    fp16: bool = False,
    force: bool = False,
    validation_data: str | os.PathLike | None = None,
    max_validation_slices: int = MAX_VALIDATION_SLICES,
    tolerance: float = TOLERANCE_FP32,
    fp16_tolerance: float = TOLERANCE_FP16,
    seed: int = 0,
    command: str | None = None,
    dynamo: bool = True,
    order_units: bool = True,
) -> Path:
    """Export a checkpoint (or a run folder: its ``checkpoint_best.pt``) to a validated model folder.

    Writes encoder.onnx, decoder.onnx (and encoder_fp16.onnx, decoder_fp16.onnx with ``fp16``) and
    model.json into a temporary folder beside ``out_dir``, validates everything, then renames it into
    place. With ``order_units`` the latent units are exported sorted by their validation KL, highest first
    (the encoder's outputs and the decoder's input permuted exactly; the card keeps the network's indices),
    so unit 0 is always the most informative; units bound to factors at training (checkpoint["binding"])
    stay first, in their order, and only the free units after them are sorted. Raises OutputError when ``out_dir`` exists and not ``force``,
    ModelError for a bad checkpoint, ExportError when export or validation fails, DicomError for unreadable
    validation data.
    """
    out_dir = Path(out_dir)
    if opset < 18:
        raise ExportError(None, f"opset {opset} is too old: the model folder format needs opset >= 18")
    if out_dir.exists() and not force:
        raise OutputError(out_dir, "exists (use --force to replace it)")
    checkpoint_path, run_dir = resolve_checkpoint(checkpoint_path)
    checkpoint, vae = load_checkpoint(checkpoint_path)
    config = vae.config
    grid = checkpoint_grid(checkpoint, config, checkpoint_path)
    specs = graph_specs(config.image_size, config.latent_size)
    real_images = None
    if validation_data is not None:
        real_images = load_validation_images(validation_data, grid, max_slices=max_validation_slices)
    feeds = parity_feeds(vae, config.image_size, config.latent_size, seed=seed, real_images=real_images)
    examples = {"encoder": torch.from_numpy(feeds["encoder"][2][:2]), "decoder": torch.from_numpy(feeds["decoder"][2][:2])}
    validation_kl = _validation_kl(vae, feeds["encoder"], real_images)
    _, kl, _ = card_module.network_kl(checkpoint, run_dir, config.latent_size, validation_kl)
    bound = len((checkpoint.get("binding") or {}).get("factors") or [])
    order = bound_first_order(kl, bound) if order_units else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        modules = _wrappers(vae, order=order)
        exporters, graphs = {}, {}
        for graph, spec in specs.items():
            graphs[graph] = staging / spec.filename
            exporters[graph] = export_graph(modules[graph], examples[graph], graphs[graph], spec,
                                            opset=opset, dynamo=dynamo)
            check_graph(graphs[graph], spec, opset=opset)
        parity = validate_parity(graphs, modules, specs, feeds, tolerance=tolerance)
        parity_fp16 = graphs_fp16 = None
        if fp16:
            modules_fp16 = _wrappers(copy.deepcopy(vae).half().eval(), half=True, order=order)
            graphs_fp16 = {}
            for graph, spec in specs.items():
                graphs_fp16[graph] = staging / spec.fp16_filename
                exporters[f"{graph}_fp16"] = export_graph(modules_fp16[graph], examples[graph],
                                                          graphs_fp16[graph], spec, opset=opset, dynamo=dynamo)
                check_graph(graphs_fp16[graph], spec, opset=opset)
            parity_fp16 = validate_parity(graphs_fp16, modules, specs, feeds, tolerance=fp16_tolerance, label="fp16")
        card = card_module.build_card(
            name=name or out_dir.name,
            checkpoint=checkpoint,
            checkpoint_path=checkpoint_path,
            run_dir=run_dir,
            vae=vae,
            grid=grid,
            specs=specs,
            graphs=graphs,
            graphs_fp16=graphs_fp16,
            exporters=exporters,
            opset=opset,
            parity=card_module.parity_section(parity, tolerance, real_images),
            parity_fp16=None if parity_fp16 is None else card_module.parity_section(parity_fp16, fp16_tolerance, real_images),
            validation_kl=validation_kl,
            command=command,
            order=order,
        )
        card_module.write_card(card, staging / CARD_FILE)
        _replace_folder(staging, out_dir, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _validation_kl(vae: BetaVAE, random_images: Sequence[np.ndarray], real_images: np.ndarray | None) -> tuple[list[float], str]:
    """Per-unit KL on the export's own inputs: the fallback when neither checkpoint nor run records it."""
    from train.model import kl_per_unit

    if real_images is not None and len(real_images):
        images, source = real_images, f"computed at export on {len(real_images)} validation slices"
    else:
        images = np.concatenate(list(random_images[: len(VALIDATION_BATCH_SIZES)]))
        source = f"computed at export on {len(images)} random images (no validation data; not meaningful)"
    with torch.no_grad():
        mu, logvar = vae.encode(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        kl = kl_per_unit(mu, logvar).mean(0)
    return [float(v) for v in kl], source


def _replace_folder(staging: Path, out_dir: Path, *, force: bool) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise OutputError(out_dir, "exists (use --force to replace it)")
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def _exporter_versions() -> dict[str, str]:
    import onnxruntime

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    with contextlib.suppress(ImportError):
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    return versions
