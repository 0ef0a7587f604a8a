"""Model folders on ONNX Runtime: find, check and run an exported encoder/decoder pair.

A model folder holds ``encoder.onnx`` ("image" -> "mu", "logvar"), ``decoder.onnx`` ("z" -> "image"),
optionally their fp16 variants for CUDA, and the card ``model.json`` (written by ``python -m export``).
numpy and onnxruntime only; onnxruntime is imported on first use so that finding and reading a model
stays cheap. Reading and checking the card lives in ``ctgen.runtime.card``; its public names are re-exported here.
The ONNX Runtime sessions and the CUDA probe's helpers live in ``ctgen.runtime.ort_session``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.runtime.card import (  # re-exported: callers import the card helpers from here too
    CARD_FILE,
    CARD_FORMAT,
    CARD_VERSION,
    COMPLETE_CARD_FIELDS,
    GRAPHS,
    NULLABLE_CARD_FIELDS,
    ModelCard,
    REQUIRED_KEYS,
    check_graph,
    graph_entry,
    incomplete_card_fields,
    model_file,
    read_card,
    read_listed_file,
    sha256_file,
    verify_files,
)
from ctgen.errors import InputError, ModelError
from ctgen.runtime.ort_session import (
    CPU, CUDA, Session, cpu_count, cuda_unavailable, load_failure_hint, onnxruntime_module, preload_cuda_libraries,
    quiet_native_output,
)

__all__ = [
    "CARD_FILE",
    "CARD_FORMAT",
    "CARD_VERSION",
    "DEFAULT_MODEL",
    "DEVICES",
    "Model",
    "incomplete_card_fields",
    "load_model",
    "read_card",
    "resolve_model_dir",
    "sha256_file",
]

DEFAULT_MODEL = "default"
DEVICES = ("auto", "cpu", "cuda")
# images per run at 128 px, scaled by 1/area for larger images: on the CPU more buys no speed and ORT's
# working memory grows with the batch (~380 MB at 32 x 128 px); 64 fits small GPUs at 256 px
BATCH_SIZE = {CPU: 16, CUDA: 256}

_CHECKOUT_MODELS = Path(__file__).resolve().parents[2] / "models"
_PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "_models"


def resolve_model_dir(name_or_path: str | os.PathLike | None = None) -> Path:
    """The folder of a model (``None``: "default"), the first of: ``name_or_path`` as a path (a folder, or its
    model.json); ``./models/NAME`` under the working folder (where ``python -m export ... --out models/NAME``
    writes); the shipped models (the checkout's ``models/NAME``, the installed package's ``ctgen/_models/NAME``).
    Raises ModelError naming every place it looked.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_file():
            if path.name != CARD_FILE:
                raise ModelError(path, f"not a model folder (expected a folder holding {CARD_FILE})")
            path = path.parent
        return path
    name = os.fspath(name_or_path)
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ModelError(path, "no such model folder")
    roots = _model_roots()
    for root, _ in roots:
        if (root / name / CARD_FILE).is_file():
            return root / name
    available = sorted({p.parent.name for root, _ in roots for p in root.glob(f"*/{CARD_FILE}")})
    hint = f"available: {', '.join(available)}" if available else "no models are installed"
    looked = ", ".join([f"./{name}", *(f"{shown}/{name}" for _, shown in roots)])
    raise ModelError(name, f"no such model: looked for {looked} ({hint})")


def _model_roots() -> list[tuple[Path, str]]:
    """(folder, as shown) where model names are looked up, in order: ./models, then the shipped ones; a folder
    met twice (working in the checkout) once."""
    roots: list[tuple[Path, str]] = []
    for root, shown in ((Path.cwd() / "models", "./models"), (_CHECKOUT_MODELS, str(_CHECKOUT_MODELS)),
                        (_PACKAGE_MODELS, str(_PACKAGE_MODELS))):
        if all(os.path.abspath(root) != os.path.abspath(seen) for seen, _ in roots):
            roots.append((root, shown))
    return roots


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    verify: bool = True,
    precision: str = "auto",
) -> Model:
    """Load a model folder (see ``resolve_model_dir``) for ONNX Runtime.

    device: "auto" (CUDA when its provider really loads, else the CPU, quietly), "cpu" or "cuda"
    (ModelError when CUDA cannot be used; checked here, not at the first run). verify: check each file's
    sha256 against the card, on the bytes that are then used, when it is first used (a command that only
    decodes never reads the encoder; ``Model.verify`` checks every file at once). precision: "auto" uses the
    fp16 graphs when the card has them and CUDA is active; "fp32" never does. Raises ModelError (a missing
    model, card or listed file) or InputError (options); a corrupt graph, or one that does not match the card
    (input and output names, float32 tensors of the card's image and latent size, no control flow, no external
    data), raises ModelError when it is first used.
    """
    if device not in DEVICES:
        raise InputError(None, f"unknown device {device!r} (choose {', '.join(DEVICES)})")
    if precision not in ("auto", "fp32"):
        raise InputError(None, f"unknown precision {precision!r} (choose auto or fp32)")
    model_dir = resolve_model_dir(name_or_path)
    card = read_card(model_dir)
    verify_files(model_dir, card, verify=False)  # present; their checksums when each is read for use
    model = Model(model_dir, card, device=device, precision=precision, verify=verify)
    if device == "cuda":
        model.provider  # noqa: B018 - builds the first session so that a missing CUDA fails here
    return model


class Model:
    """An exported β-VAE: ``encode`` images to latents and ``decode`` latents to images on ONNX Runtime.

    Build with ``load_model``. Sessions are created on first use (``provider`` creates one).
    """

    def __init__(self, path: Path, card: dict[str, Any], *, device: str = "auto", precision: str = "auto",
                 verify: bool = True):
        from ctgen.images.preprocess import Grid

        self.path = Path(path)
        self.card = card if isinstance(card, ModelCard) else ModelCard(card)
        self.grid = Grid.from_card(card)
        self.latent_size: int = card["latent_size"]
        self.device = device
        self.precision = precision
        self.verify_checksums = verify
        self._lock = threading.Lock()
        self._provider: str | None = None
        self._sessions: dict[str, Session] = {}
        self._prior = None
        self._spare_cores = 0

    def __repr__(self) -> str:
        provider = self._provider or "not started"
        return f"Model({str(self.path)!r}, image_size={self.grid.size}, latent_size={self.latent_size}, provider={provider})"

    @property
    def image_size(self) -> int:
        return self.grid.size

    @property
    def prior(self):
        """The fitted sampling prior (``ctgen.runtime.prior.MixturePrior``) when the card lists one, else None."""
        entry = self.card.get("prior")
        if not entry:
            return None
        if self._prior is None:
            from ctgen.runtime.prior import MAX_PRIOR_BYTES, load_prior

            filename = entry.get("file") if isinstance(entry, dict) else None
            if not isinstance(filename, str) or filename not in self.card["files"]:
                raise ModelError(self.path / CARD_FILE, "the prior's file is not listed (with its checksum) under files")
            path, data = read_listed_file(self.path, self.card, filename, verify=self.verify_checksums,
                                          max_bytes=MAX_PRIOR_BYTES)
            self._prior = load_prior(path, self.latent_size, data)
        return self._prior

    def spare_cores(self, count: int) -> None:
        """Leave ``count`` cores to other threads of this process (a reading pipeline): CPU sessions made from now
        on run cores - count intra-op threads, at least one. On two cores, ctgen encode over a folder runs
        296 slices/s with one ONNX Runtime thread beside the reader against 227-276 with two, whose threads
        wait on each other whenever the reader takes one of their cores."""
        self._spare_cores = max(0, int(count))

    def verify(self) -> None:
        """Check every file the card lists (sha256), both fp32 graphs against the card, and the prior (as sampling
        loads it) now. Raises ModelError."""
        for graph in GRAPHS:
            path, data = read_listed_file(self.path, self.card, graph_entry(self.card, graph)["file"],
                                          verify=self.verify_checksums)
            check_graph(path, graph, self.card, data)
        verify_files(self.path, self.card, verify=self.verify_checksums)
        self.prior  # noqa: B018 - loading is the check

    @property
    def provider(self) -> str:
        """The execution provider really in use: "CUDAExecutionProvider" or "CPUExecutionProvider"."""
        if self._provider is None and self.device == "cpu":
            return CPU
        if self._provider is None and self.device == "auto" and cuda_unavailable(onnxruntime_module()):
            self._provider = CPU  # known without loading a graph
        if self._provider is None:
            self._session("decoder")
        assert self._provider is not None
        return self._provider

    @property
    def batch_size(self) -> int:
        return max(1, BATCH_SIZE[self.provider] * 128 * 128 // (self.image_size * self.image_size))

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images float32 (N, 1, S, S) in [0, 1] -> (mu, logvar), each float32 (N, L).

        Raises InputError for a wrong shape or non-finite values.
        """
        size = self.grid.size
        images = _as_float32(images, "images")
        if images.ndim != 4 or images.shape[1:] != (1, size, size):
            raise InputError(None, f"images have shape {images.shape}; this model takes (N, 1, {size}, {size})")
        _check_finite(images, "images")
        count = images.shape[0]
        mu = np.empty((count, self.latent_size), np.float32)
        logvar = np.empty((count, self.latent_size), np.float32)
        session = self._session("encoder")
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            mu[start:stop], logvar[start:stop] = session.run({"image": images[start:stop]},
                                                             [(self.latent_size,), (self.latent_size,)])
        return mu, logvar

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latent vectors float32 (N, L) -> images float32 (N, 1, S, S) in [0, 1].

        Raises InputError for a wrong latent width or non-finite values.
        """
        z = _as_float32(z, "latent vectors")
        if z.ndim != 2:
            raise InputError(None, f"latent vectors have shape {z.shape}; this model takes (N, {self.latent_size})")
        if z.shape[1] != self.latent_size:
            raise InputError(None, f"latent vectors have width {z.shape[1]}; this model's latent size is {self.latent_size}")
        _check_finite(z, "latent vectors")
        size = self.grid.size
        images = np.empty((z.shape[0], 1, size, size), np.float32)
        session = self._session("decoder")
        for start in range(0, z.shape[0], self.batch_size):
            stop = min(start + self.batch_size, z.shape[0])
            (images[start:stop],) = session.run({"z": z[start:stop]}, [(1, size, size)])
        return images

    def _session(self, graph: str) -> Session:
        session = self._sessions.get(graph)
        if session is not None:
            return session
        with self._lock:
            if graph not in self._sessions:
                self._sessions[graph] = self._create_session(graph)
            return self._sessions[graph]

    def _create_session(self, graph: str) -> Session:
        entry = graph_entry(self.card, graph)
        fp32_path = entry["file"]
        fp16_path = entry["fp16_file"] if entry.get("fp16_file") and self.precision == "auto" else None
        if self._provider == CPU or self.device == "cpu":
            session = self._new_session(graph, fp32_path, CPU)
        elif self._provider == CUDA:
            session = self._new_session(graph, fp16_path or fp32_path, CUDA)
            if session.provider != CUDA:  # the first graph ran on CUDA; both must
                raise ModelError(session.path, "the CUDA provider did not load for this graph")
        else:
            session = self._probe_cuda(graph, fp16_path or fp32_path, fp32_path)
        self._provider = session.provider
        return session

    def _new_session(self, graph: str, filename: str, provider: str) -> Session:
        return Session(*self._checked_graph(graph, filename), provider, max(1, cpu_count() - self._spare_cores))

    def _checked_graph(self, graph: str, filename: str) -> tuple[Path, bytes]:
        """(path, bytes) of one of the card's graph files, read once: its checksum and its match with the card
        are checked on the bytes that ONNX Runtime then loads. Raises ModelError."""
        path, data = read_listed_file(self.path, self.card, filename, verify=self.verify_checksums)
        check_graph(path, graph, self.card, data)
        return path, data

    def _probe_cuda(self, graph: str, cuda_path: str, cpu_path: str) -> Session:
        """First session on "auto"/"cuda": CUDA if it really loads, else CPU ("auto") or ModelError ("cuda")."""
        ort = onnxruntime_module()
        reason = cuda_unavailable(ort)
        remedy = "install the CUDA and cuDNN libraries with pip install 'ctgen[cuda]', or use --device auto or cpu"
        if reason is not None and reason.startswith("no NVIDIA driver"):
            remedy = "use --device auto or cpu"  # no pip package helps
        if reason is None:
            path, data = self._checked_graph(graph, cuda_path)  # a bad graph is reported as itself
            with quiet_native_output() as captured:
                preload_cuda_libraries(ort)
                try:
                    session = Session(path, data, CUDA, cpu_count())
                except ModelError:
                    session = None
            if session is not None and session.provider == CUDA:
                return session
            if session is not None and cuda_path == cpu_path and self.device == "auto":
                return session  # ORT already fell back to the CPU with the right graph
            reason = "the CUDA provider did not load" + load_failure_hint(captured())
        if self.device == "cuda":
            raise ModelError(self.path, f"device cuda: {reason}; {remedy}")
        return self._new_session(graph, cpu_path, CPU)



def _as_float32(array: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(None, f"{what} are not numeric arrays ({exc})") from None


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)).ravel()
        raise InputError(None, f"{what} contain NaN or infinite values (rows {', '.join(map(str, bad[:5]))})")
