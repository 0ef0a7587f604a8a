"""The card (``model.json``) of a model folder: read and check it, and check the files it lists.

Standard library only at import, so that reading a card stays cheap; ``ctgen.runtime.model`` runs the graphs.
Every card field the runtime uses is type-checked (``ctgen.runtime.card_fields``), so that a damaged or hostile card
fails as one ModelError naming the card; the files it lists must lie inside the model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from ctgen.runtime.card_fields import check_fields, check_relative, shown_value
from ctgen.errors import InputError, ModelError
from ctgen.runtime.onnx_graph import CONTROL_FLOW_OPS, ELEMENT_TYPES, FLOAT, MAX_GRAPH_BYTES, inspect_graph
from ctgen.io.regular_file import read_regular

__all__ = [
    "BoundUnit",
    "ModelCard",
    "CARD_FILE",
    "CARD_FORMAT",
    "CARD_VERSION",
    "GRAPHS",
    "check_graph",
    "graph_entry",
    "incomplete_card_fields",
    "model_file",
    "read_card",
    "read_listed_file",
    "sha256_file",
    "verify_files",
]

CARD_FILE = "model.json"
CARD_FORMAT = "ctgen-model"
CARD_VERSION = 2  # 2: the HU map ("hu_map"); cards of version 1 have a plain "window_hu"
REQUIRED_KEYS = ("format", "card_version", "name", "image_size", "spacing_mm", "window_hu", "latent_size", "files")
MAX_CARD_BYTES = 4 << 20  # a card is a few kB; refuse to read megabytes of JSON
# graph -> (default file, input names, output names); the card's "graphs" section may override the file
GRAPHS = {
    "encoder": ("encoder.onnx", ("image",), ("mu", "logvar")),
    "decoder": ("decoder.onnx", ("z",), ("image",)),
}

# what a complete card documents (dotted paths; see DESIGN.md); "capacity" may be null but must be there
COMPLETE_CARD_FIELDS = (
    "name", "image_size", "spacing_mm", "window_hu", "latent_size", "beta", "reconstruction_loss",
    "architecture.summary", "architecture.parameters.total",
    "training.data", "training.patients", "training.slices", "training.split", "training.command", "training.epochs",
    "export.command", "export.exporter", "export.opset", "export.torch", "export.onnx", "export.onnxruntime",
    "export.parity.max_abs_diff", "export.parity.tolerance",
    "metrics.kl_per_unit", "metrics.units_by_kl", "metrics.active_units",
    "graphs.encoder.file", "graphs.decoder.file", "files",
)
NULLABLE_CARD_FIELDS = ("capacity",)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BoundUnit(NamedTuple):
    """A latent unit bound at training to a measured factor (``ctgen.factors.FACTORS``): its posterior mean is the
    standardised measurement, so ``value = mean + std * z`` in ``unit_of_measure`` ("deg", "mm", "" for a
    fraction) and ``z = (value - mean) / std``."""

    unit: int
    factor: str
    unit_of_measure: str
    mean: float
    std: float

    def to_value(self, z):
        """The factor's value (in ``unit_of_measure``) that latent value(s) ``z`` stand for."""
        return self.mean + self.std * z

    def to_z(self, value):
        """The latent value(s) that stand for the factor's ``value`` (in ``unit_of_measure``)."""
        return (value - self.mean) / self.std


class ModelCard(dict):
    """A checked card (``read_card``): the JSON object itself, plus typed views of the values that the runtime
    and its commands derive from it, computed in one place.
    """

    @property
    def name(self) -> str:
        return str(self.get("name") or "")

    @property
    def latent_size(self) -> int:
        return int(self["latent_size"])

    @property
    def encoder_sha256(self) -> str:
        return str(((self.get("files") or {}).get(graph_entry(self, "encoder")["file"]) or {}).get("sha256", "unknown"))

    @property
    def kl_per_unit(self) -> list[float] | None:
        """Per-unit KL in nats (validation data), or None when the card has none of the right length."""
        values = (self.get("metrics") or {}).get("kl_per_unit")
        if not isinstance(values, list) or len(values) != self.latent_size:
            return None
        try:
            return [float(value) for value in values]
        except (TypeError, ValueError):
            return None

    @property
    def units_by_kl(self) -> list[int]:
        """Unit indices, most informative (highest KL) first; index order when the card has no KL.

        Raises ModelError when the card's ranking is not a permutation of the units.
        """
        ranked = (self.get("metrics") or {}).get("units_by_kl")
        kl = self.kl_per_unit
        if ranked is None and kl is not None:
            ranked = sorted(range(len(kl)), key=lambda unit: (-kl[unit], unit))
        if ranked is None:
            return list(range(self.latent_size))
        try:
            ranked = [int(unit) for unit in ranked]
        except (TypeError, ValueError):
            ranked = []
        if sorted(ranked) != list(range(self.latent_size)):
            raise ModelError(CARD_FILE, f"units_by_kl is not a ranking of {self.latent_size} units")
        return ranked

    @property
    def unit_factors(self) -> dict[int, str]:
        """{unit: the factor it carries} from ``metrics.unit_factors`` ({unit: name}, or a list by unit)."""
        raw = (self.get("metrics") or {}).get("unit_factors")
        pairs = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
        factors = {}
        for unit, factor in pairs:
            if isinstance(factor, dict):
                factor = factor.get("factor") or factor.get("name")
            try:
                index = int(unit)
            except (TypeError, ValueError):
                continue
            if isinstance(factor, str) and factor and 0 <= index < self.latent_size:
                factors[index] = factor
        return factors

    @property
    def bound_units(self) -> list[BoundUnit]:
        """The units bound to measured factors (card section ``binding.units``), in unit order; [] for a model
        trained without binding (and every card written before binding existed). Checked by ``read_card``."""
        entries = (self.get("binding") or {}).get("units") or []
        return [BoundUnit(int(e["unit"]), str(e["factor"]), str(e.get("unit_of_measure", "")), float(e["mean"]),
                          float(e["std"])) for e in entries]

    def bound_unit(self, factor: str) -> BoundUnit | None:
        """The unit bound to ``factor``, or None."""
        return next((bound for bound in self.bound_units if bound.factor == factor), None)

    def unit_for_factor(self, factor: str) -> int | None:
        """The unit the card names for ``factor`` (``metrics.unit_factors``), else the active unit that carries it
        best by the evaluation's scores (``metrics.unit_labels``: {unit: {"factor", "nmi"}}, the JSON key that
        ``ctgen evaluate`` writes; not ``unit_factors``); None when no unit carries it."""
        for unit, name in self.unit_factors.items():
            if name == factor:
                return unit
        scored = (self.get("metrics") or {}).get("unit_labels") or {}
        best = [(entry.get("nmi", 0.0), int(unit)) for unit, entry in scored.items()
                if isinstance(entry, dict) and entry.get("factor") == factor and str(unit).isdigit()
                and int(unit) < self.latent_size]
        return max(best)[1] if best else None

    def unit_label(self, unit: int) -> str:
        """"u3", with the KL and the factor the card names for it when known: "u3 level (KL 1.20)"."""
        kl, factor = self.kl_per_unit, self.unit_factors.get(unit)
        text = f"u{unit}" + (f" {factor}" if factor else "")
        return text + (f" (KL {kl[unit]:.2f})" if kl is not None else "")


def read_card(model_dir: str | os.PathLike) -> ModelCard:
    """Read and check ``model.json`` of a model folder (format, version, required keys, value types).

    Raises ModelError naming the card file.
    """
    card_path = Path(model_dir) / CARD_FILE
    try:
        data = read_regular(card_path, MAX_CARD_BYTES, ModelError)
    except FileNotFoundError:
        raise ModelError(card_path, "missing: not a ctgen model folder") from None
    try:
        card = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(card_path, f"corrupt card: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(card_path, f"corrupt card: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ModelError(card_path, "corrupt card: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ModelError(card_path, f"corrupt card: not valid JSON ({str(exc)[:100]})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelError(card_path, f"not a ctgen model card (format is not {CARD_FORMAT!r})")
    version = card.get("card_version")
    if not isinstance(version, int) or version < 1:
        raise ModelError(card_path, f"bad card_version {version!r}")
    if version > CARD_VERSION:
        raise ModelError(card_path, f"card_version {version} is newer than this ctgen reads ({CARD_VERSION}); upgrade ctgen")
    missing = [key for key in REQUIRED_KEYS if key not in card]
    if missing:
        raise ModelError(card_path, f"card lacks {', '.join(missing)}")
    check_fields(card, card_path, GRAPHS)
    from ctgen.images.preprocess import Grid  # numpy-only; imported here to keep this module's import light

    try:
        Grid.from_card(card)
    except InputError as exc:
        raise ModelError(card_path, exc.reason) from None
    files = card["files"]
    for graph in GRAPHS:
        for key in ("file", "fp16_file"):
            filename = graph_entry(card, graph).get(key)
            if filename is not None and filename not in files:
                raise ModelError(card_path, f"{graph} file {filename} has no checksum under files")
    return ModelCard(card)


def model_file(model_dir: str | os.PathLike, filename: str) -> Path:
    """The path of a card's file entry, checked to stay inside ``model_dir`` (symbolic links resolved).

    Raises ModelError naming the card for a name or link that leads out of the folder."""
    folder = Path(model_dir)
    check_relative(filename, folder / CARD_FILE)
    path = folder / filename
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symbolic link loop
        inside = False
    if not inside:
        raise ModelError(folder / CARD_FILE, f"files: {shown_value(filename)} leads out of the model folder")
    return path


def verify_files(model_dir: str | os.PathLike, card: dict[str, Any], *, verify: bool = True) -> None:
    """Check that every file under the card's ``files`` exists in ``model_dir`` and, with ``verify``,
    that its sha256 matches the card. Raises ModelError naming the file.
    """
    for filename in card["files"]:
        if verify:
            read_listed_file(model_dir, card, filename)
        else:
            file_path = model_file(model_dir, filename)
            try:
                mode = file_path.stat().st_mode
            except OSError:
                raise ModelError(file_path, f"missing (listed in {CARD_FILE})") from None
            if not stat.S_ISREG(mode):
                raise ModelError(file_path, "not a regular file")


def read_listed_file(model_dir: str | os.PathLike, card: dict[str, Any], filename: str, *,
                     verify: bool = True, max_bytes: int = MAX_GRAPH_BYTES) -> tuple[Path, bytes]:
    """(path, bytes) of a file the card lists under ``files``, its sha256 checked against the card (``verify``)
    on the very bytes returned, so that what is used is what was checked. Raises ModelError naming the file
    (not listed, missing, not a regular file, larger than ``max_bytes``, unreadable, checksum mismatch)."""
    file_path = model_file(model_dir, filename)
    entry = card["files"].get(filename)
    if entry is None:
        raise ModelError(Path(model_dir) / CARD_FILE, f"files: {shown_value(filename)} has no checksum")
    try:
        data = read_regular(file_path, max_bytes, ModelError)
    except FileNotFoundError:
        raise ModelError(file_path, f"missing (listed in {CARD_FILE})") from None
    if verify:
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            raise ModelError(file_path, f"checksum mismatch (card says {entry['sha256']}, file has {actual})")
    return file_path, data


def incomplete_card_fields(card: dict[str, Any]) -> list[str]:
    """Documented card fields that are missing or empty, as dotted paths; [] for a complete card."""
    problems = [key for key in NULLABLE_CARD_FIELDS if key not in card]
    for dotted in COMPLETE_CARD_FIELDS:
        value: Any = card
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None or value == "" or value == [] or value == {}:
            problems.append(dotted)
    return problems


def graph_entry(card: dict[str, Any], graph: str) -> dict[str, Any]:
    """The card's entry for ``graph`` ("encoder" or "decoder"): file, inputs and outputs, defaults filled in."""
    default_file, inputs, outputs = GRAPHS[graph]
    entry = dict((card.get("graphs") or {}).get(graph) or {})
    entry.setdefault("file", default_file)
    entry.setdefault("inputs", list(inputs))
    entry.setdefault("outputs", list(outputs))
    return entry


def check_graph(path: Path, graph: str, card: dict[str, Any], data: bytes | None = None) -> None:
    """Check the graph file ``path`` (the card's ``graph``, "encoder" or "decoder") against the card.

    Read from its protobuf (``ctgen.runtime.onnx_graph``) before ONNX Runtime sees it: no external data, no
    control flow, the card's input and output names, float32 tensors of the card's image and latent size
    (any batch size). ``data``: the file's bytes when already read. Raises ModelError naming the file.
    """
    summary = inspect_graph(path, data)
    if summary.external_tensors:
        names = ", ".join(summary.external_tensors[:3])
        raise ModelError(path, f"keeps tensor data outside the file ({names}); the card's checksums cannot "
                               "cover external data, so ctgen refuses it")
    control = sorted(CONTROL_FLOW_OPS & summary.op_types) or (["subgraphs"] if summary.subgraphs else [])
    if control:
        raise ModelError(path, f"uses control flow ({', '.join(control)}), which the exporter never writes "
                               "and which could run without end; refused")
    size, latent = card["image_size"], card["latent_size"]
    image, vector = (1, size, size), (latent,)
    expected = {"encoder": ([image], [vector, vector]), "decoder": ([vector], [image])}[graph]
    entry = graph_entry(card, graph)
    for kind, found, names, shapes in (("inputs", summary.inputs, entry["inputs"], expected[0]),
                                       ("outputs", summary.outputs, entry["outputs"], expected[1])):
        if list(found) != list(names):
            raise ModelError(path, f"{kind} {list(found)} do not match the card ({list(names)})")
        for (name, (element, dims)), shape in zip(found.items(), shapes):
            if element != FLOAT or len(dims) != len(shape) + 1 or tuple(dims[1:]) != shape:
                shown = "x".join(str(d) for d in dims) or "a scalar"
                want = "x".join(map(str, ("N", *shape)))
                raise ModelError(path, f"{graph} {kind[:-1]} {name!r} is {ELEMENT_TYPES.get(element, element)} "
                                       f"{shown}; the card (image_size {size}, latent_size {latent}) needs "
                                       f"float32 {want}")
