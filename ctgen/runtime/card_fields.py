"""What a model card's fields may hold: types, plausible sizes, HU ranges, the binding section and file names
inside the model folder. ``ctgen.runtime.card.read_card`` runs ``check_fields`` on every card it reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ctgen.errors import ModelError

__all__ = ["CT_RANGE_HU", "MAX_LATENT_SIZE", "MIN_STEP_HU", "check_fields", "check_relative", "shown_value"]

MAX_LATENT_SIZE = 1 << 16
# HU a card's window and map may name: every value 16-bit CT stores with the usual rescales; beyond it the
# model's units -> HU in float32 overflow (a window of +-1e308 gives NaN images, such knots +inf)
CT_RANGE_HU = (-32768.0, 65535.0)
MIN_STEP_HU = 1e-3
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SECTIONS = ("architecture", "training", "export", "metrics", "evaluation")  # dicts when present


def check_fields(card: dict[str, Any], card_path: Path, graphs: Iterable[str]) -> None:
    """The types (and plausible sizes) of every card field the runtime reads; ``graphs``: the graph names
    (``ctgen.runtime.card.GRAPHS``). Raises ModelError."""

    def fail(reason: str) -> None:
        raise ModelError(card_path, reason)

    if not isinstance(card["name"], str) or len(card["name"]) > 200 or not card["name"].isprintable():
        fail(f"name must be a line of text (up to 200 characters), not {shown_value(card['name'])}")
    for key, largest in (("image_size", 4096), ("latent_size", MAX_LATENT_SIZE)):
        if not _is_int(card[key]) or not 1 <= card[key] <= largest:
            fail(f"{key} must be a positive integer up to {largest}, not {shown_value(card[key])}")
    if not _is_number(card["spacing_mm"]):
        fail(f"spacing_mm must be a number, not {shown_value(card['spacing_mm'])}")
    window = card["window_hu"]
    if not isinstance(window, list) or len(window) != 2 or not all(_is_number(v) for v in window):
        fail(f"window_hu must be two numbers [lo, hi], not {shown_value(window)}")
    _check_hu("window_hu", window, card_path)
    hu_map = card.get("hu_map")
    if isinstance(hu_map, dict) and hu_map.get("hu") is not None:
        knots = hu_map["hu"]
        if not isinstance(knots, list) or not all(_is_number(v) for v in knots):
            fail(f"hu_map.hu must be a list of numbers, not {shown_value(knots)}")
        _check_hu("hu_map.hu", knots, card_path)
    files = card["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                              and _SHA256.fullmatch(v["sha256"]) for v in files.values()):
        fail('files must map each file to {"sha256": "<64 hex digits>"}')
    for filename in files:
        check_relative(filename, card_path)
    for section in _SECTIONS:
        if card.get(section) is not None and not isinstance(card[section], dict):
            fail(f"{section} must be an object, not {shown_value(card[section])}")
    sections = card.get("graphs")
    if sections is not None and not isinstance(sections, dict):
        fail(f"graphs must be an object, not {shown_value(sections)}")
    for graph in graphs:
        entry = (sections or {}).get(graph)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            fail(f"graphs.{graph} must be an object, not {shown_value(entry)}")
        for key in ("file", "fp16_file"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                fail(f"graphs.{graph}.{key} must be a file name, not {shown_value(entry[key])}")
        for key in ("inputs", "outputs"):
            names = entry.get(key)
            if names is not None and (not isinstance(names, (list, dict)) or not names
                                      or not all(isinstance(name, str) for name in names)):
                fail(f"graphs.{graph}.{key} must list tensor names, not {shown_value(names)}")
    metrics = card.get("metrics") or {}
    kl = metrics.get("kl_per_unit")
    if kl is not None and (not isinstance(kl, list) or not all(_is_number(v) for v in kl)):
        fail(f"metrics.kl_per_unit must be a list of numbers, not {shown_value(kl)}")
    ranked = metrics.get("units_by_kl")
    if ranked is not None and (not isinstance(ranked, list) or not all(_is_int(v) for v in ranked)):
        fail(f"metrics.units_by_kl must be a list of unit indices, not {shown_value(ranked)}")
    active = metrics.get("active_units")
    if active is not None and not _is_int(active):
        fail(f"metrics.active_units must be an integer, not {shown_value(active)}")
    factors = metrics.get("unit_factors")
    if factors is not None and not isinstance(factors, (dict, list)):
        fail(f"metrics.unit_factors must be an object or a list, not {shown_value(factors)}")
    _check_binding(card, fail)


def _check_binding(card: dict[str, Any], fail) -> None:
    """``binding``: {"units": [{"unit", "factor", "unit_of_measure", "mean", "std"}, ...], ...}: distinct units
    inside the latent, distinct factor names, finite means and positive finite standard deviations."""
    binding = card.get("binding")
    if binding is None:
        return
    if not isinstance(binding, dict) or not isinstance(binding.get("units", []), list):
        fail(f"binding must be an object with a list of units, not {shown_value(binding)}")
    seen_units, seen_factors = set(), set()
    for entry in binding.get("units", []):
        if not isinstance(entry, dict):
            fail(f"binding.units must hold objects, not {shown_value(entry)}")
        unit, factor = entry.get("unit"), entry.get("factor")
        if not _is_int(unit) or not 0 <= unit < card["latent_size"] or unit in seen_units:
            fail(f"binding.units: unit must be a distinct index below latent_size, not {shown_value(unit)}")
        if not isinstance(factor, str) or not factor.isidentifier() or factor in seen_factors:
            fail(f"binding.units: factor must be a distinct name, not {shown_value(factor)}")
        if not isinstance(entry.get("unit_of_measure", ""), str) or len(entry.get("unit_of_measure", "")) > 20:
            fail(f"binding.units.{factor}: unit_of_measure must be a short text")
        mean, std = entry.get("mean"), entry.get("std")
        if not (_is_number(mean) and math.isfinite(mean)) or not (_is_number(std) and math.isfinite(std) and std > 0):
            fail(f"binding.units.{factor}: mean must be finite and std finite and positive, not {shown_value(mean)}, "
                 f"{shown_value(std)}")
        seen_units.add(unit)
        seen_factors.add(factor)


def _check_hu(key: str, values: list, card_path: Path) -> None:
    """HU values of a window or map: inside CT_RANGE_HU and each at least MIN_STEP_HU above the one before, so
    that model units <-> HU stay finite in float32 (a window of 1e-40 HU divides by zero)."""
    low, high = CT_RANGE_HU
    outside = [v for v in values if not low <= v <= high]
    if outside:
        raise ModelError(card_path, f"{key} {shown_value(outside[0])} lies outside the CT range {low:g} to {high:g} HU")
    if not all(b - a >= MIN_STEP_HU for a, b in zip(values, values[1:])):
        need = "needs lo < hi" if len(values) == 2 else "must increase strictly"
        raise ModelError(card_path, f"{key} {shown_value(values)} {need} (by {MIN_STEP_HU:g} HU at least)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def shown_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_relative(filename: Any, card_path: Path) -> None:
    """A card's file entry must name a file inside the model folder: relative, without "..", plain text."""
    if (not isinstance(filename, str) or not filename or "\\" in filename
            or PurePosixPath(filename).is_absolute() or PureWindowsPath(filename).drive
            or ".." in PurePosixPath(filename).parts or not filename.isprintable()):
        raise ModelError(card_path, f"files: {shown_value(filename)} is not a file name inside the model folder")
