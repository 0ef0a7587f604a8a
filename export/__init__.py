"""Export a trained checkpoint to a validated ONNX model folder (``python -m export``).

Imports run one way: export -> train -> ctgen. The public names load lazily so that
``python -m export --help`` answers before PyTorch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "export_model": "export.onnx_export",
    "export_graph": "export.onnx_export",
    "check_graph": "export.onnx_export",
    "validate_parity": "export.onnx_export",
    "graph_specs": "export.onnx_export",
    "load_checkpoint": "export.onnx_export",
    "resolve_checkpoint": "export.onnx_export",
    "ExportError": "export.onnx_export",
    "GraphSpec": "export.onnx_export",
    "OPSET": "export.onnx_export",
    "TOLERANCE_FP32": "export.onnx_export",
    "TOLERANCE_FP16": "export.onnx_export",
    "build_card": "export.card",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from export.card import build_card
    from export.onnx_export import (
        OPSET,
        TOLERANCE_FP16,
        TOLERANCE_FP32,
        ExportError,
        GraphSpec,
        check_graph,
        export_graph,
        export_model,
        graph_specs,
        load_checkpoint,
        resolve_checkpoint,
        validate_parity,
    )
