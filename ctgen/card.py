"""The card (``model.json``) of a model folder: read and check it, and check the files it lists.

Standard library only at import, so that reading a card stays cheap; ``ctgen.model`` runs the graphs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ctgen.errors import InputError, ModelError

__all__ = [
    "ModelCard",
    "CARD_FILE",
    "CARD_FORMAT",
    "CARD_VERSION",
    "GRAPHS",
    "graph_entry",
    "incomplete_card_fields",
    "read_card",
    "sha256_file",
    "verify_files",
]

CARD_FILE = "model.json"
CARD_FORMAT = "ctgen-model"
CARD_VERSION = 2  # 2: the HU map ("hu_map"); cards of version 1 have a plain "window_hu"
REQUIRED_KEYS = ("format", "card_version", "name", "image_size", "spacing_mm", "window_hu", "latent_size", "files")
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
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(card_path, "missing: not a ctgen model folder") from None
    except OSError as exc:
        raise ModelError(card_path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(card_path, f"corrupt card: not valid JSON ({exc.msg} at line {exc.lineno})") from None
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
    for key in ("image_size", "latent_size"):
        if not isinstance(card[key], int) or isinstance(card[key], bool) or card[key] < 1:
            raise ModelError(card_path, f"{key} must be a positive integer, not {card[key]!r}")
    from ctgen.preprocess import Grid  # numpy-only; imported here to keep this module's import light

    try:
        Grid.from_card(card)
    except InputError as exc:
        raise ModelError(card_path, exc.reason) from None
    files = card["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v for v in files.values()):
        raise ModelError(card_path, 'files must map each graph file to {"sha256": ...}')
    for graph in GRAPHS:
        for key in ("file", "fp16_file"):
            filename = graph_entry(card, graph).get(key)
            if filename is not None and filename not in files:
                raise ModelError(card_path, f"{graph} file {filename} has no checksum under files")
    return ModelCard(card)


def verify_files(model_dir: str | os.PathLike, card: dict[str, Any], *, verify: bool = True) -> None:
    """Check that every file under the card's ``files`` exists in ``model_dir`` and, with ``verify``,
    that its sha256 matches the card. Raises ModelError naming the file.
    """
    for filename, entry in card["files"].items():
        file_path = Path(model_dir) / filename
        if not file_path.is_file():
            raise ModelError(file_path, f"missing (listed in {CARD_FILE})")
        if verify:
            actual = sha256_file(file_path)
            if actual != entry["sha256"]:
                raise ModelError(file_path, f"checksum mismatch (card says {entry['sha256']}, file has {actual})")


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
