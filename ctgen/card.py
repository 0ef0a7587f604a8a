"""The card (``model.json``) of a model folder: read and check it, and check the files it lists.

Standard library only at import, so that reading a card stays cheap; ``ctgen.model`` runs the graphs.
Every card field the runtime uses is type-checked here, so that a damaged or hostile card fails as one
ModelError naming the card; the files it lists must lie inside the model folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

from ctgen.errors import InputError, ModelError
from ctgen.onnx_graph import CONTROL_FLOW_OPS, ELEMENT_TYPES, FLOAT, MAX_GRAPH_BYTES, inspect_graph
from ctgen.regular_file import read_regular

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
MAX_LATENT_SIZE = 1 << 16
# HU a card's window and map may name: every value 16-bit CT stores with the usual rescales; beyond it the
# model's units -> HU in float32 overflow (a window of +-1e308 gives NaN images, such knots +inf)
CT_RANGE_HU = (-32768.0, 65535.0)
MIN_STEP_HU = 1e-3
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SECTIONS = ("architecture", "training", "export", "metrics", "evaluation")  # dicts when present
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
    def unit_labels(self) -> dict[int, str]:
        """{unit: the factor it carries} from ``metrics.unit_factors`` ({unit: name}, or a list by unit)."""
        raw = (self.get("metrics") or {}).get("unit_factors")
        pairs = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
        labels = {}
        for unit, factor in pairs:
            if isinstance(factor, dict):
                factor = factor.get("factor") or factor.get("name")
            try:
                index = int(unit)
            except (TypeError, ValueError):
                continue
            if isinstance(factor, str) and factor and 0 <= index < self.latent_size:
                labels[index] = factor
        return labels

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
        best (``metrics.unit_labels``); None when no unit carries it."""
        for unit, name in self.unit_labels.items():
            if name == factor:
                return unit
        scored = (self.get("metrics") or {}).get("unit_labels") or {}
        best = [(entry.get("nmi", 0.0), int(unit)) for unit, entry in scored.items()
                if isinstance(entry, dict) and entry.get("factor") == factor and str(unit).isdigit()
                and int(unit) < self.latent_size]
        return max(best)[1] if best else None

    def unit_label(self, unit: int) -> str:
        """"u3", with the KL and the factor the card names for it when known: "u3 level (KL 1.20)"."""
        kl, factor = self.kl_per_unit, self.unit_labels.get(unit)
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
    _check_fields(card, card_path)
    from ctgen.preprocess import Grid  # numpy-only; imported here to keep this module's import light

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


def _check_fields(card: dict[str, Any], card_path: Path) -> None:
    """The types (and plausible sizes) of every card field the runtime reads. Raises ModelError."""

    def fail(reason: str) -> None:
        raise ModelError(card_path, reason)

    if not isinstance(card["name"], str) or len(card["name"]) > 200 or not card["name"].isprintable():
        fail(f"name must be a line of text (up to 200 characters), not {_shown(card['name'])}")
    for key, largest in (("image_size", 4096), ("latent_size", MAX_LATENT_SIZE)):
        if not _is_int(card[key]) or not 1 <= card[key] <= largest:
            fail(f"{key} must be a positive integer up to {largest}, not {_shown(card[key])}")
    if not _is_number(card["spacing_mm"]):
        fail(f"spacing_mm must be a number, not {_shown(card['spacing_mm'])}")
    window = card["window_hu"]
    if not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window):
        fail(f"window_hu must be two numbers [lo, hi], not {_shown(window)}")
    _check_hu("window_hu", window, card_path)
    hu_map = card.get("hu_map")
    if isinstance(hu_map, dict) and hu_map.get("hu") is not None:
        knots = hu_map["hu"]
        if not isinstance(knots, list) or not all(_is_number(v) for v in knots):
            fail(f"hu_map.hu must be a list of numbers, not {_shown(knots)}")
        _check_hu("hu_map.hu", knots, card_path)
    files = card["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                              and _SHA256.fullmatch(v["sha256"]) for v in files.values()):
        fail('files must map each file to {"sha256": "<64 hex digits>"}')
    for filename in files:
        _check_relative(filename, card_path)
    for section in _SECTIONS:
        if card.get(section) is not None and not isinstance(card[section], dict):
            fail(f"{section} must be an object, not {_shown(card[section])}")
    graphs = card.get("graphs")
    if graphs is not None and not isinstance(graphs, dict):
        fail(f"graphs must be an object, not {_shown(graphs)}")
    for graph in GRAPHS:
        entry = (graphs or {}).get(graph)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            fail(f"graphs.{graph} must be an object, not {_shown(entry)}")
        for key in ("file", "fp16_file"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                fail(f"graphs.{graph}.{key} must be a file name, not {_shown(entry[key])}")
        for key in ("inputs", "outputs"):
            names = entry.get(key)
            if names is not None and (not isinstance(names, (list, dict)) or not names
                                      or not all(isinstance(name, str) for name in names)):
                fail(f"graphs.{graph}.{key} must list tensor names, not {_shown(names)}")
    metrics = card.get("metrics") or {}
    kl = metrics.get("kl_per_unit")
    if kl is not None and (not isinstance(kl, list) or not all(_is_number(v) for v in kl)):
        fail(f"metrics.kl_per_unit must be a list of numbers, not {_shown(kl)}")
    ranked = metrics.get("units_by_kl")
    if ranked is not None and (not isinstance(ranked, list) or not all(_is_int(v) for v in ranked)):
        fail(f"metrics.units_by_kl must be a list of unit indices, not {_shown(ranked)}")
    active = metrics.get("active_units")
    if active is not None and not _is_int(active):
        fail(f"metrics.active_units must be an integer, not {_shown(active)}")
    factors = metrics.get("unit_factors")
    if factors is not None and not isinstance(factors, (dict, list)):
        fail(f"metrics.unit_factors must be an object or a list, not {_shown(factors)}")
    _check_binding(card, fail)


def _check_binding(card: dict[str, Any], fail) -> None:
    """``binding``: {"units": [{"unit", "factor", "unit_of_measure", "mean", "std"}, ...], ...}: distinct units
    inside the latent, distinct factor names, finite means and positive finite standard deviations."""
    binding = card.get("binding")
    if binding is None:
        return
    if not isinstance(binding, dict) or not isinstance(binding.get("units", []), list):
        fail(f"binding must be an object with a list of units, not {_shown(binding)}")
    seen_units, seen_factors = set(), set()
    for entry in binding.get("units", []):
        if not isinstance(entry, dict):
            fail(f"binding.units must hold objects, not {_shown(entry)}")
        unit, factor = entry.get("unit"), entry.get("factor")
        if not _is_int(unit) or not 0 <= unit < card["latent_size"] or unit in seen_units:
            fail(f"binding.units: unit must be a distinct index below latent_size, not {_shown(unit)}")
        if not isinstance(factor, str) or not factor.isidentifier() or factor in seen_factors:
            fail(f"binding.units: factor must be a distinct name, not {_shown(factor)}")
        if not isinstance(entry.get("unit_of_measure", ""), str) or len(entry.get("unit_of_measure", "")) > 20:
            fail(f"binding.units.{factor}: unit_of_measure must be a short text")
        mean, std = entry.get("mean"), entry.get("std")
        if not (_is_number(mean) and math.isfinite(mean)) or not (_is_number(std) and math.isfinite(std) and std > 0):
            fail(f"binding.units.{factor}: mean must be finite and std finite and positive, not {_shown(mean)}, "
                 f"{_shown(std)}")
        seen_units.add(unit)
        seen_factors.add(factor)


def _check_hu(key: str, values: list, card_path: Path) -> None:
    """HU values of a window or map: inside CT_RANGE_HU and each at least MIN_STEP_HU above the one before, so
    that model units <-> HU stay finite in float32 (a window of 1e-40 HU divides by zero)."""
    low, high = CT_RANGE_HU
    outside = [v for v in values if not low <= v <= high]
    if outside:
        raise ModelError(card_path, f"{key} {_shown(outside[0])} lies outside the CT range {low:g} to {high:g} HU")
    if not all(b - a >= MIN_STEP_HU for a, b in zip(values, values[1:])):
        need = "needs lo < hi" if len(values) == 2 else "must increase strictly"
        raise ModelError(card_path, f"{key} {_shown(values)} {need} (by {MIN_STEP_HU:g} HU at least)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _check_relative(filename: Any, card_path: Path) -> None:
    """A card's file entry must name a file inside the model folder: relative, without "..", plain text."""
    if (not isinstance(filename, str) or not filename or "\\" in filename
            or PurePosixPath(filename).is_absolute() or PureWindowsPath(filename).drive
            or ".." in PurePosixPath(filename).parts or not filename.isprintable()):
        raise ModelError(card_path, f"files: {_shown(filename)} is not a file name inside the model folder")


def model_file(model_dir: str | os.PathLike, filename: str) -> Path:
    """The path of a card's file entry, checked to stay inside ``model_dir`` (symbolic links resolved).

    Raises ModelError naming the card for a name or link that leads out of the folder."""
    folder = Path(model_dir)
    _check_relative(filename, folder / CARD_FILE)
    path = folder / filename
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symbolic link loop
        inside = False
    if not inside:
        raise ModelError(folder / CARD_FILE, f"files: {_shown(filename)} leads out of the model folder")
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
        raise ModelError(Path(model_dir) / CARD_FILE, f"files: {_shown(filename)} has no checksum")
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

    Read from its protobuf (``ctgen.onnx_graph``) before ONNX Runtime sees it: no external data, no
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
