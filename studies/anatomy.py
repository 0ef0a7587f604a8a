"""Issue 26's anatomy study at equal budget: today's transposed-convolution decoder against resize and sub-pixel
convolution, the L2 reconstruction against L1 + MS-SSIM + focal frequency, each with and without the patch
adversarial loss, every run exported and scored by ``ctgen evaluate`` on unseen phantom sets (``studies.runner``).

    python -m studies.anatomy --data data/phantom350 --out runs/anatomy --report reports/anatomy \\
        --sets data/eval --epochs 20 -- --image-size 128 --latent 16 --width 32 --hu-map ct

Arguments after ``--`` are added to every training command line unchanged (``--bind ...`` to study both issues in
one go).

The rule (``choose``), fixed before any of these runs was scored: sharpness must not cost the units their meaning,
so a run is eligible only if its MIG and DCI disentanglement on the random-level set are each at least 0.9 x
those of the reference run (transposed, L2, no adversarial loss), and, for a bound model, at least as many bound
factors meet the controllability target (slope 0.8-1.2, R² ≥ 0.8, leakage ≤ 0.25 SD per SD) as in the
reference. Among the eligible runs, the one meeting the most targets of issue 26's "Done when" below; a tie goes
to the higher mean of the four band power ratios (reconstructions and samples, both bands), then to the lower
brain-window MAE. The reference is eligible by definition.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from studies.runner import Run

__all__ = ["REFERENCE", "TARGETS", "choose", "plan", "targets_met"]

TITLE = "Anatomy at equal budget: decoder, losses, adversary (issue 26)"
REFERENCE = "transposed_l2"
SSIM_WEIGHT, FREQ_WEIGHT, ADV_WEIGHT = 1.0, 1.0, 0.1
MEANING_KEPT = 0.9  # MIG and DCI must stay at this share of the reference's
BAND_MIN = {"0.125-0.25": 0.75, "0.25-0.5": 0.4}
TISSUE_CSF_MIN, CSF_DICE_MIN, MAE_MAX_HU = 0.8, 0.7, 13.0
PRECISION_SHARE, ANATOMY_FAIL_MAX = 0.9, 0.03
CONTROL_SLOPE, CONTROL_R2, CONTROL_LEAKAGE = (0.8, 1.2), 0.8, 0.25
TARGETS = [
    f"tissue-to-CSF contrast kept ≥ {TISSUE_CSF_MIN:g}", f"CSF Dice inside the skull ≥ {CSF_DICE_MIN:g}",
    *(f"power ratio ≥ {value:g} in the {band} cycles/px band, reconstructions and samples"
      for band, value in BAND_MIN.items()),
    f"brain-window MAE ≤ {MAE_MAX_HU:g} HU",
    f"sample precision ≥ {PRECISION_SHARE:g} x that of real slices of other held-out patients",
    f"under {ANATOMY_FAIL_MAX:.0%} of samples failing the anatomical check",
]


def plan(adv_start: int = 0) -> list[Run]:
    """Every decoder x reconstruction loss x (with and without the adversarial loss): 12 runs, one budget."""
    losses = {"l2": ["--recon", "l2"],
              "l1ssimfreq": ["--recon", "l1", "--ssim-weight", f"{SSIM_WEIGHT:g}", "--freq-weight", f"{FREQ_WEIGHT:g}"]}
    runs = []
    for upsample in ("transposed", "resize", "subpixel"):
        for loss, loss_args in losses.items():
            for adversarial in (False, True):
                extra = ["--adv-weight", f"{ADV_WEIGHT:g}", "--adv-start", str(adv_start)] if adversarial else []
                runs.append(Run(f"{upsample}_{loss}" + ("_adv" if adversarial else ""),
                                ["--upsample", upsample, *loss_args, *extra]))
    return runs


def _controlled(row: dict[str, Any]) -> int:
    return sum(1 for entry in row["control"].values() if entry["slope"] is not None
               and CONTROL_SLOPE[0] <= entry["slope"] <= CONTROL_SLOPE[1] and (entry["r2"] or 0.0) >= CONTROL_R2
               and entry["leakage_max"] is not None and entry["leakage_max"] <= CONTROL_LEAKAGE)


def targets_met(row: dict[str, Any]) -> dict[str, bool]:
    """Each target of TARGETS met or not (by a short name) by one row of ``studies.runner``."""
    met = {"tissue-CSF": (row["tissue_csf_kept"] or 0.0) >= TISSUE_CSF_MIN,
           "CSF Dice": (row["csf_dice"] or 0.0) >= CSF_DICE_MIN}
    for band, value in BAND_MIN.items():
        met[f"power {band}"] = all(((row[kind] or {}).get(band) or 0.0) >= value
                                   for kind in ("recon_bands", "sample_bands"))
    met["MAE"] = row["mae_hu_window"] is not None and row["mae_hu_window"] <= MAE_MAX_HU
    met["precision"] = (row["sample_precision"] is not None and row["heldout_precision"] is not None
                        and row["sample_precision"] >= PRECISION_SHARE * row["heldout_precision"])
    met["anatomy check"] = row["anatomy_fail"] is not None and row["anatomy_fail"] < ANATOMY_FAIL_MAX
    return met


def _band_mean(row: dict[str, Any]) -> float:
    values = [((row[kind] or {}).get(band) or 0.0) for kind in ("recon_bands", "sample_bands") for band in BAND_MIN]
    return sum(values) / len(values)


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The rule of the module docstring: (the chosen row, why)."""
    reference = next(row for row in rows if row["run"] == REFERENCE)

    def keeps_meaning(row: dict[str, Any]) -> bool:
        return row is reference or (
            (row["mig"] or 0.0) >= MEANING_KEPT * (reference["mig"] or 0.0)
            and (row["dci_disentanglement"] or 0.0) >= MEANING_KEPT * (reference["dci_disentanglement"] or 0.0)
            and _controlled(row) >= _controlled(reference))

    eligible = [row for row in rows if keeps_meaning(row)]
    counted = {row["run"]: sum(targets_met(row).values()) for row in rows}

    def key(row: dict[str, Any]) -> tuple:
        mae = row["mae_hu_window"] if row["mae_hu_window"] is not None else float("inf")
        return counted[row["run"]], _band_mean(row), -mae

    chosen = max(eligible, key=key)
    excluded = [row["run"] for row in rows if row not in eligible]
    missed = [name for name, ok in targets_met(chosen).items() if not ok]
    why = (f"{counted[chosen['run']]} of {len(TARGETS)} targets met; excluded for losing the units' meaning "
           f"(MIG or DCI below {MEANING_KEPT:g} x {REFERENCE}'s, or fewer controllable factors): "
           f"{', '.join(excluded) or 'none'}; targets met per run: "
           + ", ".join(f"{run} {count}" for run, count in counted.items())
           + (f"; missed: {', '.join(missed)}" if missed else ""))
    return chosen, why


def run_anatomy(args: argparse.Namespace, train_args: list[str], command: str,
                execute=None) -> list[dict[str, Any]]:
    """Write the rule, train, export and score every run of ``plan``, write the table and the choice."""
    from studies import runner

    return runner.run_study(args, train_args, command, title=TITLE, doc=__doc__, targets=TARGETS,
                            plan=plan(args.adv_start), choose=choose, targets_met=targets_met,
                            execute=execute)


def main(argv: list[str] | None = None) -> int:
    from studies.runner import study_main

    return study_main(argv, "studies.anatomy", __doc__, {
        "out": Path("runs/anatomy"), "report": Path("reports/anatomy"),
        "options": {"--adv-start": (int, 0, "step at which the adversarial runs switch the discriminator on")},
    }, run_anatomy)


if __name__ == "__main__":
    sys.exit(main())
