"""ctgen: generate and explore brain CT slices with disentangled β-VAEs on ONNX Runtime.

The public API is imported lazily so that ``ctgen --version`` and ``import ctgen`` stay
fast and never pull in ONNX Runtime (and never PyTorch, at all).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CtgenError": "ctgen.errors",
    "DicomError": "ctgen.errors",
    "ModelError": "ctgen.errors",
    "InputError": "ctgen.errors",
    "OutputError": "ctgen.errors",
    "Slice": "ctgen.io.dicom",
    "read_slice": "ctgen.io.dicom",
    "read_series": "ctgen.io.dicom",
    "write_series": "ctgen.io.dicom",
    "Grid": "ctgen.images.preprocess",
    "to_model": "ctgen.images.preprocess",
    "from_model": "ctgen.images.preprocess",
    "batch_to_model": "ctgen.images.preprocess",
    "Model": "ctgen.runtime.model",
    "load_model": "ctgen.runtime.model",
    "Generator": "ctgen.api",
    "load_generator": "ctgen.api",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ctgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from ctgen.io.dicom import Slice, read_series, read_slice, write_series
    from ctgen.errors import CtgenError, DicomError, InputError, ModelError, OutputError
    from ctgen.runtime.model import Model, load_model
    from ctgen.api import Generator, load_generator
    from ctgen.images.preprocess import Grid, batch_to_model, from_model, to_model
