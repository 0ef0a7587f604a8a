"""The graph contract of a model folder and the checks that exported graphs meet it.

Validation is strict: ``onnx.checker`` (full check) and strict shape inference; input/output names,
dtypes and shapes exactly as specified; then each graph runs in ONNX Runtime on the CPU on the same inputs
as PyTorch (random inputs at batch sizes 1, 3 and 16, plus real slices when given) and one ExportError
lists every output's max |difference| when any exceeds the tolerance.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ctgen.runtime.card import GRAPHS
from ctgen.errors import ModelError
from ctgen.images.preprocess import Grid
from train.model import BetaVAE

__all__ = [
    "BATCH_DIM",
    "MAX_VALIDATION_SLICES",
    "TOLERANCE_FP16",
    "TOLERANCE_FP32",
    "VALIDATION_BATCH_SIZES",
    "ExportError",
    "GraphSpec",
    "check_graph",
    "graph_specs",
    "load_validation_images",
    "parity_feeds",
    "validate_parity",
]

BATCH_DIM = "N"
TOLERANCE_FP32 = 1e-4  # max |ORT - PyTorch| for fp32 graphs
TOLERANCE_FP16 = 2e-2  # max |ORT fp16 graph - PyTorch fp32|; images are in [0, 1], latents O(1)
VALIDATION_BATCH_SIZES = (1, 3, 16)
MAX_VALIDATION_SLICES = 32
_ELEM_FLOAT = onnx.TensorProto.FLOAT


class ExportError(ModelError):
    """An export failed or produced graphs that do not pass validation."""


@dataclass(frozen=True)
class GraphSpec:
    """Names and shapes of one graph's inputs and outputs; ``BATCH_DIM`` marks the dynamic axis."""

    name: str
    inputs: dict[str, tuple[int | str, ...]]
    outputs: dict[str, tuple[int | str, ...]]

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"

    @property
    def fp16_filename(self) -> str:
        return f"{self.name}_fp16.onnx"


def graph_specs(image_size: int, latent_size: int) -> dict[str, GraphSpec]:
    """The encoder and decoder specs of the model folder layout (all tensors float32): the names of
    ``ctgen.runtime.card.GRAPHS``, the one graph contract that the runtime reads too."""
    shapes = {"image": (BATCH_DIM, 1, image_size, image_size), "z": (BATCH_DIM, latent_size),
              "mu": (BATCH_DIM, latent_size), "logvar": (BATCH_DIM, latent_size)}
    return {graph: GraphSpec(graph, {name: shapes[name] for name in inputs}, {name: shapes[name] for name in outputs})
            for graph, (_, inputs, outputs) in GRAPHS.items()}


def load_validation_images(source: str | os.PathLike, grid: Grid, *, max_slices: int = MAX_VALIDATION_SLICES) -> np.ndarray:
    """Real slices for parity checks: the files that ``ctgen.io.scan`` finds usable under ``source`` (DICOM, multi-frame
    files and NIfTI volumes, as training and the runtime select them), up to ``max_slices`` spread evenly (sorted),
    each file's middle slice (``ctgen.io.sources.one_slice``, as the one-slice commands take it), through
    ``ctgen.images.preprocess.batch_to_model``. float32 (N, 1, S, S) in [0, 1]. Raises DicomError.
    """
    from ctgen.errors import DicomError
    from ctgen.images.preprocess import batch_to_model
    from ctgen.io.scan import scan
    from ctgen.io.sources import one_slice, read_slices

    files = sorted(Path(entry.path) for entry in scan([source]).entries if entry.reason == "ok")
    if not files:
        raise DicomError(source, "no usable CT slices found for validation (ctgen scan says why)")
    if len(files) > max_slices:
        picks = np.linspace(0, len(files) - 1, max_slices).round().astype(int)
        files = [files[i] for i in sorted(set(picks.tolist()))]
    picked = [one_slice(file) for file in files]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # files without pixel spacing only warn; fine for parity
        slices = [read_slices(one.path, None if one.index is None else [one.index])[0] for one in picked]
        return batch_to_model(slices, grid)


def check_graph(path: str | os.PathLike, spec: GraphSpec, *, opset: int | None = None) -> onnx.ModelProto:
    """Structural checks of one saved graph; raises one ExportError listing every problem.

    onnx.checker (full), strict shape inference, no external data, the opset, and input/output names,
    order, float32 dtypes and shapes as in ``spec`` (the batch axis symbolic).
    """
    path = Path(path)
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(path, f"not a readable ONNX file ({_first_line(exc)})") from None
    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        problems.append(f"onnx.checker: {_first_line(exc)}")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        problems.append(f"shape inference: {_first_line(exc)}")
        inferred = model
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        problems.append(f"initializers stored outside the file: {', '.join(external[:5])}")
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and default_opset != opset:
        problems.append(f"opset {default_opset}, expected {opset}")
    for kind, values, expected in (("input", inferred.graph.input, spec.inputs),
                                   ("output", inferred.graph.output, spec.outputs)):
        names = [value.name for value in values]
        if names != list(expected):
            problems.append(f"{kind} names {names}, expected {list(expected)}")
        for value in values:
            if value.name not in expected:
                continue
            tensor = value.type.tensor_type
            if tensor.elem_type != _ELEM_FLOAT:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else "unknown"
                problems.append(f"{kind} {value.name!r} has dtype {dtype}, expected float32")
            shape = _shape_of(value)
            wanted = expected[value.name]
            if not _shape_matches(shape, wanted):
                problems.append(f"{kind} {value.name!r} has shape {_fmt_shape(shape)}, expected {_fmt_shape(wanted)}")
    if problems:
        raise ExportError(path, "invalid graph: " + "; ".join(problems))
    return model


def _shape_of(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    if not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
        for dim in value.type.tensor_type.shape.dim
    )


def _shape_matches(shape: tuple | None, wanted: tuple) -> bool:
    if shape is None or len(shape) != len(wanted):
        return False
    for dim, expected in zip(shape, wanted):
        if isinstance(expected, str):
            if not isinstance(dim, str):  # the batch axis must stay dynamic
                return False
        elif dim != expected:
            return False
    return True


def _fmt_shape(shape: tuple | None) -> str:
    return "unknown" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def validate_parity(
    graphs: dict[str, Path],
    modules: dict[str, nn.Module],
    specs: dict[str, GraphSpec],
    feeds: dict[str, list[np.ndarray]],
    *,
    tolerance: float,
    label: str = "fp32",
) -> dict[str, dict[str, float]]:
    """Run each graph in ONNX Runtime (CPU) and its PyTorch module on the same inputs.

    graphs: name -> .onnx file; modules: name -> fp32 reference module (eval); feeds: name -> list of
    float32 input batches. Returns {graph: {output: max |difference|}}. Raises one ExportError listing
    every output's figure when any exceeds ``tolerance`` or an output has the wrong shape or dtype.
    """
    import onnxruntime as ort

    figures: dict[str, dict[str, float]] = {}
    problems: list[str] = []
    for name, path in graphs.items():
        spec = specs[name]
        (input_name,) = spec.inputs
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = min(os.cpu_count() or 1, 4)
        try:
            session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(path, f"ONNX Runtime cannot load it ({_first_line(exc)})") from None
        worst = dict.fromkeys(spec.outputs, 0.0)
        for batch in feeds[name]:
            with torch.no_grad():
                reference = modules[name](torch.from_numpy(batch))
            reference = reference if isinstance(reference, tuple) else (reference,)
            try:
                outputs = session.run(list(spec.outputs), {input_name: batch})
            except Exception as exc:
                raise ExportError(path, f"ONNX Runtime failed at batch {batch.shape[0]} ({_first_line(exc)})") from None
            for output_name, expected, actual in zip(spec.outputs, reference, outputs):
                expected = expected.numpy()
                if actual.shape != expected.shape or actual.dtype != np.float32:
                    problems.append(f"{path.name} {output_name}: got {actual.dtype} {actual.shape}, "
                                    f"PyTorch gives float32 {expected.shape}")
                    worst[output_name] = float("inf")
                    continue
                difference = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
                if not np.isfinite(difference):
                    difference = float("inf")
                worst[output_name] = max(worst[output_name], difference)
        figures[name] = worst
    failed = [(graph, output) for graph, outs in figures.items() for output, d in outs.items() if not d <= tolerance]
    if failed or problems:
        listing = ", ".join(f"{graphs[g].name} {o} {d:.3g}" for g, outs in figures.items() for o, d in outs.items())
        detail = "; ".join(problems)
        raise ExportError(
            Path(next(iter(graphs.values()))).parent,
            f"{label} parity check failed (tolerance {tolerance:g}): max |ORT - PyTorch| {listing}"
            + (f"; {detail}" if detail else ""),
        )
    return figures


def parity_feeds(vae: BetaVAE, image_size: int, latent_size: int, *, seed: int = 0,
                 real_images: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
    """Validation inputs: random images in [0, 1] and N(0, 1) latents at batch sizes 1, 3, 16, plus real
    slices (in batches of 16) and their PyTorch mu for the decoder. Same seed -> same inputs."""
    rng = np.random.default_rng(seed)
    images = [rng.random((n, 1, image_size, image_size), dtype=np.float32) for n in VALIDATION_BATCH_SIZES]
    latents = [rng.standard_normal((n, latent_size), dtype=np.float32) for n in VALIDATION_BATCH_SIZES]
    if real_images is not None and len(real_images):
        for start in range(0, len(real_images), 16):
            batch = np.ascontiguousarray(real_images[start:start + 16], dtype=np.float32)
            images.append(batch)
            with torch.no_grad():
                latents.append(vae.encode(torch.from_numpy(batch))[0].numpy())
    return {"encoder": images, "decoder": latents}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
