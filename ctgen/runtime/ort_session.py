"""ONNX Runtime behind ctgen: one ``Session`` per graph, providers and threads set explicitly, and the CUDA
probe's helpers (is the provider there, is the NVIDIA driver, what did a failed load say). ``ctgen.runtime.model``
builds its sessions here; onnxruntime itself is imported on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.errors import ModelError

__all__ = ["CPU", "CUDA", "Session", "cpu_count", "cuda_unavailable", "cuda_driver_present", "load_failure_hint",
           "onnxruntime_module", "preload_cuda_libraries", "quiet_native_output"]

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
_QUIET = 4  # ONNX Runtime's log severity "fatal": its own error lines must not sit beside ctgen's one line
_preload_lock = threading.Lock()
_preloaded = False


class Session:
    """One graph on one ONNX Runtime session; inputs fed by name, IO binding on CUDA."""

    def __init__(self, path: Path, data: bytes, provider: str, threads: int):  # data: what check_graph passed
        ort = onnxruntime_module()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = _QUIET  # failures become ModelError; a failed CUDA load is handled
        # idle ORT threads must not spin: the CLI reads DICOM in a thread beside inference on few cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = [CPU]
        if provider == CUDA:
            # heuristic conv algorithms: exhaustive search re-runs for every new batch size
            providers = [(CUDA, {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}), CPU]
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelError(path, f"ONNX Runtime cannot load it ({first_line(exc)})") from None
        self.path = path
        self.provider = CUDA if CUDA in self.session.get_providers() else CPU
        self.use_io_binding = self.provider == CUDA
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = _QUIET
        self.input_names = [arg.name for arg in self.session.get_inputs()]
        self.output_names = [arg.name for arg in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """The outputs for ``feeds``; each must be finite and of shape (N, *shape). Raises ModelError."""
        feeds = {name: np.ascontiguousarray(array) for name, array in feeds.items()}
        try:
            if not self.use_io_binding:
                outputs = self.session.run(self.output_names, feeds, self.run_options)
            else:
                binding = self.session.io_binding()
                for name, array in feeds.items():
                    binding.bind_cpu_input(name, array)
                for name in self.output_names:
                    binding.bind_output(name, "cpu")
                self.session.run_with_iobinding(binding, self.run_options)
                outputs = binding.copy_outputs_to_cpu()
        except Exception as exc:
            raise ModelError(self.path, f"inference failed ({first_line(exc)})") from None
        count = len(next(iter(feeds.values())))
        for name, output, shape in zip(self.output_names, outputs, shapes):
            if output.shape != (count, *shape):
                raise ModelError(self.path, f"output {name!r} has shape {output.shape}, expected {(count, *shape)}")
            if not np.isfinite(output).all():
                raise ModelError(self.path, f"output {name!r} holds NaN or infinite values (damaged weights?)")
        return outputs


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def onnxruntime_module() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(None, f"onnxruntime is not installed ({exc})") from None
    return onnxruntime


def cuda_unavailable(ort: Any) -> str | None:
    """Why the CUDA provider cannot load here, when that is known without trying; None: try it."""
    if CUDA not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider (install onnxruntime-gpu, e.g. ctgen[cuda])"
    if not cuda_driver_present():
        return "no NVIDIA driver on this machine (libcuda cannot be loaded)"
    return None


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver's library loads: without it the CUDA provider cannot, and trying (loading the
    CUDA and cuDNN libraries, then failing) costs a CPU-only machine about 8 ms on every ctgen call."""
    name = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}.get(sys.platform)
    if name is None:
        return False
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def preload_cuda_libraries(ort: Any) -> None:
    """Load CUDA/cuDNN from NVIDIA's pip wheels (ctgen[cuda]) once; it prints, so call it quietly."""
    global _preloaded
    with _preload_lock:
        if not _preloaded and hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):
                ort.preload_dlls()
        _preloaded = True


def load_failure_hint(text: str) -> str:
    for line in text.splitlines():
        if "with error:" in line:
            return f" ({line.split('with error:', 1)[1].strip()})"
    for line in text.splitlines():
        if "Failed to create CUDAExecutionProvider" in line or "CUDA failure" in line:
            return f" ({line.split(']', 1)[-1].strip()[:200]})"
    return ""


@contextlib.contextmanager
def quiet_native_output() -> Iterator[Any]:
    """Redirect file descriptors 1 and 2 (and sys.stdout/err) into a temporary file for the block.

    onnxruntime writes CUDA load failures straight to the process's stderr and ``preload_dlls`` prints
    to stdout; neither must reach the user when "auto" quietly falls back to the CPU. Yields a function
    returning the captured text. The redirection is process-wide for the duration of the block.
    """
    text: list[str] = []
    python_out = io.StringIO()
    import tempfile  # here: it costs 4 ms of start-up, and only the CUDA probe needs it

    with tempfile.TemporaryFile() as sink:
        saved: list[tuple[int, int]] = []
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            except OSError:
                pass
        try:
            with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_out):
                yield lambda: "".join(text)
        finally:
            with contextlib.suppress(Exception):  # C stdio buffers must drain into the sink, not later
                ctypes.CDLL(None).fflush(None)
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace"))
            text.append(python_out.getvalue())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
