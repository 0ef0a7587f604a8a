"""The model card (``model.json``): everything the runtime and a reader need, from the checkpoint and its run.

Training facts come from the checkpoint written by ``train.train`` (keys "train", "loss", "data",
"metrics", "command", "epoch", "versions") and, where the checkpoint lacks them, from the run folder
(config.json, command.txt, split.json, metrics.jsonl). Hashed patient lists never enter the card.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ctgen.runtime.model import CARD_FORMAT, CARD_VERSION, sha256_file
from ctgen.images.preprocess import Grid
from train.model import ACTIVE_UNIT_KL, BetaVAE

__all__ = ["binding_section", "build_card", "dumps_card", "json_safe", "network_kl", "parity_section", "update_card",
           "write_card"]


def build_card(
    *,
    name: str,
    checkpoint: dict[str, Any],
    checkpoint_path: Path,
    run_dir: Path | None,
    vae: BetaVAE,
    grid: Grid,
    specs: Mapping[str, Any],
    graphs: Mapping[str, Path],
    graphs_fp16: Mapping[str, Path] | None,
    exporters: Mapping[str, str],
    opset: int,
    parity: dict[str, Any],
    parity_fp16: dict[str, Any] | None,
    validation_kl: tuple[list[float], str],
    command: str | None,
    order: list[int] | None = None,
) -> dict[str, Any]:
    """The card as a JSON-ready dict (see /DESIGN.md "A model on disk"). ``order``: the network's unit behind
    each exported unit (None: the network's own order)."""
    from export.onnx_export import _exporter_versions

    run_config = _read_json(run_dir / "config.json") if run_dir else {}
    train_config = checkpoint.get("train") or run_config.get("train") or {}
    loss = checkpoint.get("loss") or {}
    config = vae.config
    graph_section: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for graph, spec in specs.items():
        entry: dict[str, Any] = {
            "file": graphs[graph].name,
            "inputs": {k: list(v) for k, v in spec.inputs.items()},
            "outputs": {k: list(v) for k, v in spec.outputs.items()},
            "dtype": "float32",
        }
        files[graphs[graph].name] = _file_entry(graphs[graph], "fp32")
        if graphs_fp16:
            entry["fp16_file"] = graphs_fp16[graph].name
            files[graphs_fp16[graph].name] = _file_entry(graphs_fp16[graph], "fp16")
        graph_section[graph] = entry
    beta = loss.get("beta", train_config.get("beta"))
    objective = {key: loss[key] for key in ("objective", "weights", "discriminator", "pairs", "losses") if key in loss}
    capacity = loss.get("capacity")
    if capacity is None and train_config.get("capacity_max") is not None:
        capacity = {"max_nats": train_config["capacity_max"], "steps": train_config.get("capacity_steps"),
                    "gamma": train_config.get("gamma")}
    versions = _exporter_versions()
    kinds = {value.split()[0] for value in exporters.values()}
    export_section: dict[str, Any] = {
        "command": command or f"export.export_model({str(checkpoint_path)!r}, ...)",
        "exporter": {"dynamo": "torch.onnx.export(dynamo=True)", "torchscript": "torch.onnx.export(dynamo=False)"}.get(
            kinds.pop() if len(kinds) == 1 else "", "mixed (see exporters)"),
        "exporters": dict(exporters),
        "opset": opset,
        "ir_version": onnx.load(os.fspath(next(iter(graphs.values()))), load_external_data=False).ir_version,
        "batch_axis": "N (dynamic)",
        **versions,
        "parity": parity,
    }
    if parity_fp16 is not None:
        export_section["parity_fp16"] = {
            **parity_fp16,
            "compared_with": "PyTorch fp32",
            "note": "fp16 graphs are for CUDAExecutionProvider only (the runtime never uses them on the CPU); "
                    "validated here on the CPU provider, which computes in fp32 between fp16 activations",
        }
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION if not grid.hu_map.is_window else 1,  # old ctgen reads window cards
        "name": name,
        **grid.to_card(),
        "latent_size": config.latent_size,
        "beta": beta,
        "capacity": capacity,
        "reconstruction_loss": loss.get("reconstruction"),
        "objective": objective or {"objective": "betavae"},
        "architecture": _architecture(vae),
        "training": _training(checkpoint, checkpoint_path, run_dir, run_config, train_config),
        "export": export_section,
        "metrics": _metrics(checkpoint, run_dir, config.latent_size, validation_kl,
                            order or list(range(config.latent_size))),
        "units": {"order": _order_text(order, checkpoint), "network_unit": order or list(range(config.latent_size))},
        "graphs": graph_section,
        "files": files,
    }
    binding = binding_section(checkpoint.get("binding"))
    if binding is not None:
        card["binding"] = binding
    return json_safe(card)


def _order_text(order: list[int] | None, checkpoint: dict[str, Any]) -> str:
    if not order:
        return "the network's"
    if checkpoint.get("binding"):
        return "bound units first (in the order of --bind), then the free units by validation KL, highest first"
    return "by validation KL, highest first"


def binding_section(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's ``binding`` (ctgen.runtime.card: units 0..B-1 with factor, unit of measure and the standardisation's
    mean and std; source, fraction, weight) from checkpoint["binding"]; None for a run without one."""
    if not record:
        return None
    units = [{"unit": unit, "factor": factor, "unit_of_measure": measure, "mean": float(mean), "std": float(std)}
             for unit, (factor, measure, mean, std) in enumerate(zip(record["factors"], record["units"],
                                                                       record["mean"], record["std"]))]
    cycle = float(record.get("cycle_weight") or 0.0)  # named only when on: earlier cards keep their bytes
    return {"units": units, "source": record["source"], "fraction": float(record["fraction"]),
            "weight": float(record["weight"]),
            **({"cycle_weight": cycle, "cycle_reader": record.get("cycle_reader", "joint")} if cycle else {})}


def parity_section(figures: dict[str, dict[str, float]], tolerance: float, real_images: np.ndarray | None) -> dict[str, Any]:
    """The card's record of one parity check: max |ORT − PyTorch| per output and what was compared."""
    from export.onnx_export import VALIDATION_BATCH_SIZES

    return {
        "provider": "CPUExecutionProvider",
        "tolerance": tolerance,
        "max_abs_diff": figures,
        "random_batch_sizes": list(VALIDATION_BATCH_SIZES),
        "real_slices": 0 if real_images is None else int(len(real_images)),
    }


def write_card(card: dict[str, Any], path: Path) -> None:
    """model.json: UTF-8, two-space indent with lists of numbers on one line, trailing newline.

    No timestamps: the same export gives the same bytes.
    """
    path.write_text(dumps_card(card) + "\n", encoding="utf-8")


def update_card(model_dir: str | os.PathLike, change) -> dict[str, Any]:
    """Read MODEL_DIR/model.json, apply ``change(card)`` (in place) and write it back atomically; the graphs
    and their checksums stay as the export wrote them. Returns the new card. Raises ModelError."""
    from ctgen.io.atomic import atomic_file
    from ctgen.runtime.card import CARD_FILE, read_card

    card = dict(read_card(model_dir))
    change(card)
    with atomic_file(Path(model_dir) / CARD_FILE, force=True, mode="w") as handle:
        handle.write(dumps_card(card) + "\n")
    return card


def dumps_card(value: Any, indent: int = 0) -> str:
    """JSON like ``json.dumps(indent=2)`` but with flat lists (shapes, per-unit KL) kept on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dumps_card(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(inner + dumps_card(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def json_safe(value: Any) -> Any:
    """Tensors/arrays -> lists, numpy/torch scalars -> Python, non-finite floats -> None, paths -> str."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _file_entry(path: Path, precision: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "precision": precision}
    if precision == "fp16":
        entry["providers"] = ["CUDAExecutionProvider"]
    return entry


UPSAMPLE_SUMMARY = {"transposed": "ConvTranspose4x4/2", "resize": "nearest x2 + conv3x3",
                    "subpixel": "conv3x3 to 4C + PixelShuffle(2) (ICNR)"}


def _architecture(vae: BetaVAE) -> dict[str, Any]:
    config = vae.config
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    encoder = count(vae.encoder) + count(vae.to_latent)
    decoder = count(vae.from_latent) + count(vae.decoder)
    channels = config.channels
    side = config.bottleneck[1]
    return {
        "class": f"{type(vae).__module__}.{type(vae).__qualname__}",
        "config": asdict(config),
        "summary": (
            f"encoder: 5 stages of conv3x3 + conv4x4/2 (BatchNorm, LeakyReLU {config.leaky_slope}), channels "
            f"{channels}, {config.image_size} -> {side} px, linear -> 2x{config.latent_size} (mu, logvar); "
            f"decoder: linear -> ({channels[-1]}, {side}, {side}), 5 {UPSAMPLE_SUMMARY[config.upsample]} up to "
            f"{config.image_size} px, "
            f"conv3x3, conv3x3 -> 1 channel, sigmoid"
        ),
        "parameters": {"encoder": encoder, "decoder": decoder, "total": count(vae)},
        "batchnorm": "folded into the convolutions by the exporter",
    }


def _training(checkpoint: dict[str, Any], checkpoint_path: Path, run_dir: Path | None,
              run_config: dict[str, Any], train_config: dict[str, Any]) -> dict[str, Any]:
    data = dict(checkpoint.get("data") or {})
    data.pop("split_patients", None)  # hashed patient ids: not for a published card
    split = data.pop("split", None)
    if split is None and run_dir is not None:
        split_record = _read_json(run_dir / "split.json")
        split = {k: (len(v) if isinstance(v, list) else v) for k, v in split_record.items()} or None
    command = checkpoint.get("command") or run_config.get("command")
    if not command and run_dir is not None and (run_dir / "command.txt").is_file():
        command = (run_dir / "command.txt").read_text(encoding="utf-8").strip()
    # the folders as the training command named them (relative to where it ran), not this machine's
    # absolute paths: a published card must not carry a local directory layout
    sources = train_config.get("data") or data.get("sources") or []
    if "sources" in data:
        data["sources"] = list(sources)
    return {
        "data": ", ".join(map(str, sources)) if sources else None,
        "patients": data.get("patients"),
        "slices": data.get("slices"),
        "split": split,
        "command": command or None,
        "epochs": train_config.get("epochs"),
        "best_epoch": checkpoint.get("epoch"),
        "steps": checkpoint.get("step"),
        "data_summary": data or None,
        "config": train_config or None,
        "checkpoint": {"file": checkpoint_path.name, "sha256": sha256_file(checkpoint_path)},
        "versions": checkpoint.get("versions") or {"torch": run_config.get("torch")},
    }


def network_kl(checkpoint: dict[str, Any], run_dir: Path | None, latent_size: int,
               validation_kl: tuple[list[float], str]) -> tuple[dict[str, Any], list[float], str]:
    """The checkpoint's (or its run's) metrics, the network's per-unit KL in its own unit order, and where
    the KL comes from: the validation set when training recorded it, else ``validation_kl``."""
    metrics = dict(checkpoint.get("metrics") or {})
    source = "checkpoint"
    if metrics.get("kl_per_unit") is None and run_dir is not None:
        record = _metrics_line(run_dir / "metrics.jsonl", checkpoint.get("epoch"))
        if record:
            metrics = {**record, **{k: v for k, v in metrics.items() if v is not None}}
            source = "run metrics.jsonl" if record.get("kl_per_unit") is not None else source
    if metrics.get("kl_per_unit") is None or len(metrics["kl_per_unit"]) != latent_size:
        metrics["kl_per_unit"], source = validation_kl
    return metrics, [float(v) for v in metrics["kl_per_unit"]], source


def _metrics(checkpoint: dict[str, Any], run_dir: Path | None, latent_size: int,
             validation_kl: tuple[list[float], str], order: list[int]) -> dict[str, Any]:
    """The card's metrics in the exported unit order: per-unit lists permuted by ``order``."""
    metrics, _, source = network_kl(checkpoint, run_dir, latent_size, validation_kl)
    for key, value in list(metrics.items()):
        if key.endswith("per_unit") and isinstance(value, list) and len(value) == latent_size:
            metrics[key] = [value[unit] for unit in order]
    kl = [float(v) for v in metrics["kl_per_unit"]]
    metrics["kl_per_unit"] = kl
    metrics["units_by_kl"] = sorted(range(len(kl)), key=lambda unit: (-kl[unit], unit))
    metrics["active_units"] = sum(value > ACTIVE_UNIT_KL for value in kl)
    metrics["active_unit_kl_nats"] = ACTIVE_UNIT_KL
    metrics["kl_source"] = source
    return metrics


def _metrics_line(path: Path, epoch: Any) -> dict[str, Any]:
    """The metrics.jsonl record of ``epoch`` (the checkpoint's), else the last one with per-unit KL."""
    if not path.is_file():
        return {}
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    for record in records:
        if epoch is not None and record.get("epoch") == epoch:
            return record
    with_kl = [r for r in records if r.get("kl_per_unit") is not None]
    return with_kl[-1] if with_kl else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
