"""Issue 25's controllability study: the bound units' latent cycle (``train --cycle-weight``, train.binding) at
equal budget against the same training without it, every run exported and scored by ``ctgen evaluate`` on unseen
phantom sets (``studies.runner``).

    python -m studies.cycle --data data/phantom350 --out runs/cycle --report reports/cycle --sets data/eval \\
        --epochs 4 -- --image-size 64 --latent 10 --width 16 --hu-map ct --upsample resize --recon l1 \\
        --ssim-weight 1 --freq-weight 1 --bind level,rotation_deg,head_width_max_mm,head_length_max_mm,ventricle_mm2

Arguments after ``--`` are added to every training command line unchanged (they must bind units: the cycle reads
them back). ``--reader frozen`` studies ``train --cycle-reader frozen`` instead (runs ``frozen_W``; report it in a
folder of its own: the plan differs).

The rule (``choose``), fixed before any of these runs was scored: the cycle must not cost the units their meaning
or the anatomy, so a run is eligible only if its MIG and DCI disentanglement on the random-level set are each at
least 0.9 x those of the reference run (no cycle) and its brain-window MAE at most 1.1 x the reference's. Among
the eligible runs, the one whose bound factors meet the most of issue 25's controllability targets (level,
rotation, head width, ventricle size: slope 0.8-1.2, R² ≥ 0.8, leakage ≤ 0.25 SD per SD); a tie goes to the lower
mean |slope − 1| over those four factors, then to the lower brain-window MAE. The reference is eligible by
definition. All of issue 25's targets are reported beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from studies import binding
from studies.runner import Run

__all__ = ["REFERENCE", "TARGETS", "WEIGHTS", "choose", "plan", "targets_met"]

TITLE = "Controllability: the bound units' latent cycle (issue 25)"
REFERENCE = "no_cycle"
WEIGHTS = (0.3, 1.0)  # --cycle-weight of the cycle runs: under and at the bind term's own weight (1)
MEANING_KEPT, MAE_KEPT = 0.9, 1.1  # MIG and DCI at least, brain-window MAE at most, this share of the reference's
TARGETS = binding.TARGETS  # issue 25's, reported in full; the rule counts the controllability ones
CONTROLLABILITY = tuple(f"control {name}" for name in binding.CONTROL_TARGETS)


def plan(reader: str = "joint") -> list[Run]:
    """The reference without the cycle, then one run per weight of WEIGHTS with the cycle's ``reader`` (train
    --cycle-reader): cycle_W for joint, frozen_W for frozen."""
    if reader == "joint":
        return [Run(REFERENCE), *(Run(f"cycle_{weight:g}", ["--cycle-weight", f"{weight:g}"]) for weight in WEIGHTS)]
    return [Run(REFERENCE), *(Run(f"{reader}_{weight:g}", ["--cycle-weight", f"{weight:g}", "--cycle-reader", reader])
                              for weight in WEIGHTS)]


def targets_met(row: dict[str, Any]) -> dict[str, bool]:
    """Each of issue 25's targets (``studies.binding.targets_met``) met or not by one row of ``studies.runner``."""
    return binding.targets_met(row)


def _slope_error(row: dict[str, Any]) -> float:
    """Mean |slope − 1| over the four controllability factors (a factor not scored counts as 1)."""
    errors = []
    for factors in binding.CONTROL_TARGETS.values():
        entry = next((row["control"][factor] for factor in factors if factor in row["control"]), None)
        slope = entry["slope"] if entry else None
        errors.append(abs(slope - 1.0) if slope is not None else 1.0)
    return sum(errors) / len(errors)


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The rule of the module docstring: (the chosen row, why)."""
    reference = next(row for row in rows if row["run"] == REFERENCE)
    reference_mae = reference["mae_hu_window"] if reference["mae_hu_window"] is not None else float("inf")

    def eligible(row: dict[str, Any]) -> bool:
        return row is reference or (
            (row["mig"] or 0.0) >= MEANING_KEPT * (reference["mig"] or 0.0)
            and (row["dci_disentanglement"] or 0.0) >= MEANING_KEPT * (reference["dci_disentanglement"] or 0.0)
            and row["mae_hu_window"] is not None and row["mae_hu_window"] <= MAE_KEPT * reference_mae)

    controlled = {row["run"]: sum(targets_met(row)[name] for name in CONTROLLABILITY) for row in rows}

    def key(row: dict[str, Any]) -> tuple:
        mae = row["mae_hu_window"] if row["mae_hu_window"] is not None else float("inf")
        return controlled[row["run"]], -_slope_error(row), -mae

    candidates = [row for row in rows if eligible(row)]
    chosen = max(candidates, key=key)
    excluded = [row["run"] for row in rows if row not in candidates]
    why = (f"{controlled[chosen['run']]} of {len(CONTROLLABILITY)} controllability targets met, mean |slope − 1| "
           f"{_slope_error(chosen):.2f}; per run: "
           + ", ".join(f"{row['run']} {controlled[row['run']]} ({_slope_error(row):.2f})" for row in rows)
           + f"; excluded (MIG or DCI below {MEANING_KEPT:g} x, or MAE above {MAE_KEPT:g} x {REFERENCE}'s): "
           + (", ".join(excluded) or "none"))
    return chosen, why


def run_cycle(args: argparse.Namespace, train_args: list[str], command: str, execute=None) -> list[dict[str, Any]]:
    """Write the rule, train, export and score every run of ``plan``, write the table and the choice."""
    from studies import runner

    if "--bind" not in train_args:
        raise RuntimeError("the cycle reads bound units back: give --bind FACTORS after --")
    return runner.run_study(args, train_args, command, title=TITLE, doc=__doc__, targets=TARGETS,
                            plan=plan(getattr(args, "reader", "joint")), choose=choose, targets_met=targets_met,
                            execute=execute)


def main(argv: list[str] | None = None) -> int:
    from studies.runner import study_main

    return study_main(argv, "studies.cycle", __doc__, {
        "out": Path("runs/cycle"), "report": Path("reports/cycle"),
        "options": {"--reader": (str, "joint", "the cycle's reader (train --cycle-reader): joint or frozen")},
    }, run_cycle)


if __name__ == "__main__":
    sys.exit(main())
