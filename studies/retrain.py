"""The retrain of ``models/default`` against the model it would replace, by the rule in ``reports/default/rule.md``
(written before either was scored): the candidate replaces the current default when it meets at least as many of
the targets of issue 25 (``studies.binding``) and issue 26 (``studies.anatomy``) as the current default does on
the same unseen sets; a tie goes to the lower brain-window MAE.

    python -m studies.retrain --candidate runs/default_v3/report --current runs/default_current/report \\
        --out reports/default/decision.md

Both folders are ``ctgen evaluate`` reports (``metrics.json``) made by the same command on the same sets.
``--candidate-model FOLDER`` also holds the candidate to the period-2 test that the suite holds the shipped decoder
to (``period_two_gate``): a decoder that fails it does not replace the default, whatever it scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ctgen.evaluation.metrics.sharpness import PERIOD_TWO_LIMIT, decoder_period_two_peaks
from studies import anatomy, binding
from studies.runner import row_from_report, table_markdown

__all__ = ["decide", "period_two_gate", "targets_met"]


def targets_met(row: dict[str, Any]) -> dict[str, bool]:
    """Issue 25's and issue 26's targets (short names; the MAE target is the same in both and counted once)."""
    met = {f"25 {name}": ok for name, ok in binding.targets_met(row).items()}
    met |= {f"26 {name}": ok for name, ok in anatomy.targets_met(row).items() if name != "MAE"}
    return met


def decide(candidate: dict[str, Any], current: dict[str, Any]) -> tuple[bool, str]:
    """(whether the candidate replaces the current default, why) by the rule of the module docstring."""
    counts = {row["run"]: sum(targets_met(row).values()) for row in (candidate, current)}
    mae = {row["run"]: row["mae_hu_window"] if row["mae_hu_window"] is not None else float("inf")
           for row in (candidate, current)}
    replaces = (counts[candidate["run"]] > counts[current["run"]]
                or (counts[candidate["run"]] == counts[current["run"]] and mae[candidate["run"]] < mae[current["run"]]))
    total = len(targets_met(candidate))
    why = (f"targets met: {candidate['run']} {counts[candidate['run']]} of {total}, {current['run']} "
           f"{counts[current['run']]} of {total}; brain-window MAE {mae[candidate['run']]:.2f} vs "
           f"{mae[current['run']]:.2f} HU")
    return replaces, why


def period_two_gate(model_folder: Path) -> tuple[bool, dict[str, float]]:
    """(whether the decoder in ``model_folder`` passes, its peaks): the suite's check of the shipped decoder
    (``ctgen.evaluation.metrics.sharpness.decoder_period_two_peaks``), every peak under PERIOD_TWO_LIMIT."""
    from ctgen.runtime.model import load_model

    peaks = decoder_period_two_peaks(load_model(str(model_folder), device="cpu"))
    return max(peaks.values()) < PERIOD_TWO_LIMIT, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", type=Path, required=True, help="ctgen evaluate report of the retrain")
    parser.add_argument("--current", type=Path, required=True, help="ctgen evaluate report of the current default")
    parser.add_argument("--out", type=Path, required=True, help="the decision, as markdown")
    parser.add_argument("--candidate-model", type=Path,
                        help="the candidate's model folder: its decoder must pass the period-2 test to replace")
    parser.add_argument("--rule", default="reports/default/rule.md",
                        help="the rule file this retrain was run under, named in the decision")
    args = parser.parse_args(argv)
    rows = []
    for name, folder in (("retrain", args.candidate), ("current default", args.current)):
        try:
            rows.append(row_from_report(name, json.loads((folder / "metrics.json").read_text())))
        except (OSError, ValueError) as exc:
            print(f"error: {folder / 'metrics.json'}: {exc}", file=sys.stderr)
            return 1
    replaces, why = decide(*rows)
    gate = ""
    if args.candidate_model is not None:
        passed, peaks = period_two_gate(args.candidate_model)
        shown = " / ".join(f"{value:.2f}" for value in peaks.values())
        gate = (f"Period-2 test of the retrain's decoder (64 N(0, I) draws, limit {PERIOD_TWO_LIMIT:g}): {shown}, "
                f"{'passed' if passed else 'failed'}.")
        if not passed:
            replaces, why = False, f"its decoder fails the period-2 test ({shown}); {why}"
    met = [targets_met(row) for row in rows]
    names = list(met[0])
    lines = ["# The retrain against the current default", "",
             f"The rule: `{args.rule}` (written before either was scored).", "",
             table_markdown(rows), "", "| target | " + " | ".join(row["run"] for row in rows) + " |",
             "|---|" + "---|" * len(rows)]
    lines += [f"| {name} | " + " | ".join("yes" if m[name] else "no" for m in met) + " |" for name in names]
    lines += ["", gate] if gate else []
    lines += ["", f"**Decision:** {'the retrain replaces models/default' if replaces else 'the current default stays'}"
              f" ({why})."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
