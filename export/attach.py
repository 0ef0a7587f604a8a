"""``python -m export.attach MODEL_DIR REPORT_DIR [--note TEXT]``: put measured figures into a model card.

REPORT_DIR is what ``ctgen evaluate`` wrote (its metrics.json). The compact figures of
``ctgen.evaluation.evaluate.card_metrics`` go into the card's "metrics" (so ``ctgen info``, ``ctgen units`` and
``ctgen explore`` show them), and an "evaluation" section records the command and where the figures came
from. Only model.json changes: the graphs and their checksums stay as the export wrote them. ``--note``
records why the model was trained as it was (e.g. the choice of β).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ctgen.runtime.card import CARD_FILE, read_card
from ctgen.errors import CtgenError, InputError
from ctgen.evaluation.evaluate import card_metrics
from export.card import update_card


def attach_evaluation(model_dir: str | os.PathLike, report_dir: str | os.PathLike, *,
                      note: str | None = None, command: str | None = None) -> dict[str, Any]:
    """Merge the report's card figures into MODEL_DIR/model.json (atomically); return the new card.

    Raises ModelError for a missing or corrupt card, InputError for a missing or unreadable report.
    """
    model_dir, report_path = Path(model_dir), Path(report_dir) / "metrics.json"
    read_card(model_dir)  # a missing or corrupt card fails before the report is read
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(report_path, f"cannot read the evaluation report ({exc.__class__.__name__})") from None
    figures = card_metrics(report)
    study = report.get("study") or {}
    evaluation = {
        "study": {key: study.get(key) for key in ("path", "factors", "split", "max_slices", "seed", "evaluated",
                                                   "heldout_slices")},
        "interpretation": report.get("interpretation"),
        "attached_by": command,
        "figures": sorted(figures),
    }
    if note:
        evaluation["note"] = note

    def attach(card: dict[str, Any]) -> None:
        card["metrics"] = {**(card.get("metrics") or {}), **figures}
        card["evaluation"] = evaluation

    return update_card(model_dir, attach)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.attach", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("report_dir", metavar="REPORT_DIR", help="folder written by `ctgen evaluate`")
    parser.add_argument("--note", help="why the model was trained as it was, recorded in the card")
    args = parser.parse_args(argv)
    command = " ".join(["python -m export.attach", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        card = attach_evaluation(args.model_dir, args.report_dir, note=args.note, command=command)
    except CtgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"updated {Path(args.model_dir) / CARD_FILE}: {', '.join(card['evaluation']['figures'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
