"""``python -m export.prior MODEL_DIR --data DICOM_DIR [--split RUN/split.json]``: fit a sampling prior.

The standard prior N(0, I) has holes that the decoder never learned to fill; a Gaussian mixture fitted to the
posterior means of the training slices follows where the data's codes lie. The slices are encoded by the
exported model itself (ONNX Runtime, through ``ctgen.api``), so the prior matches the graphs unit for unit.
The number of components is chosen from ``--components`` by the mean log-likelihood of the validation
patients' codes (ties: fewer components). Writes ``prior.npz`` (numpy arrays only) and lists it, with its
checksum and the selection table, in the card; sampling at run time needs numpy alone (``ctgen.runtime.prior``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ctgen.runtime.card import CARD_FILE, sha256_file
from ctgen.errors import CtgenError, InputError
from ctgen.runtime.prior import PRIOR_FILE, MixturePrior, save_prior
from export.card import update_card

__all__ = ["fit_prior", "COMPONENTS"]

COMPONENTS = (1, 2, 4, 8, 16, 32)
VAL_FRACTION = 0.2  # without a split.json: this share of patients (seeded) chooses the number of components


def _selection(data: str | os.PathLike, split: str | os.PathLike | None) -> tuple[list[Path], dict[str, str], Any]:
    """The files ``ctgen.io.scan`` finds usable under ``data`` (as training selects them), each file's patient key
    under the run's ``split_by`` (its config.json beside split.json; "auto" without one), and the
    ``ctgen.io.sources.FolderSelection`` that counts the files scan left out by reason."""
    from ctgen.io.scan import scan
    from ctgen.io.sources import FolderSelection

    split_by = "auto"
    if split is not None and (config := Path(split).with_name("config.json")).is_file():
        split_by = json.loads(config.read_text(encoding="utf-8")).get("train", {}).get("split_by") or "auto"
    inventory = scan([data], split_by=split_by)
    return [Path(entry.path) for entry in inventory.used], {entry.path: entry.patient for entry in inventory.used}, \
        FolderSelection.of(data, inventory)


def _split(keys: list[str], split: str | os.PathLike | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, validation) over the files."""
    keys_array = np.array(keys)
    if split is not None:
        record = json.loads(Path(split).read_text(encoding="utf-8"))
        train = np.isin(keys_array, record["train_patients"])
        val = np.isin(keys_array, record.get("val_patients") or [])
    else:
        patients = sorted(set(keys))
        order = np.random.default_rng(seed).permutation(len(patients))
        held = {patients[i] for i in order[: max(1, round(VAL_FRACTION * len(patients)))]}
        val = np.array([key in held for key in keys])
        train = ~val
    if not train.any() or not val.any():
        raise InputError(split, f"need training and validation slices, found {int(train.sum())} and {int(val.sum())}")
    return train, val


def fit_prior(model_dir: str | os.PathLike, data: str | os.PathLike, *, split: str | os.PathLike | None = None,
              components: tuple[int, ...] = COMPONENTS, seed: int = 0, command: str | None = None,
              skipped: list[str] | None = None, on_selection: Any = None) -> dict[str, Any]:
    """Fit, choose and write the mixture prior of ``model_dir`` from the slices under ``data``; returns the
    card's "prior" section. The slices are those ``ctgen.io.scan`` selects (as training does): what it leaves out
    is counted by reason (the ``FolderSelection`` goes to ``on_selection`` when given, the counts to the card);
    a selected file that cannot be read after all is left out, and its "path: reason" line is appended to
    ``skipped``. Raises InputError (no usable slice), ModelError."""
    from sklearn.mixture import GaussianMixture

    from ctgen.api import Generator
    from ctgen.runtime.model import load_model
    from ctgen.io.sources import split_source

    skipped = [] if skipped is None else skipped
    model_dir = Path(model_dir)
    generator = Generator(load_model(model_dir, device="cpu"))
    files, patients, selection = _selection(data, split)
    if on_selection is not None:
        on_selection(selection)
    if not files:
        raise InputError(data, f"no usable CT slices ({selection.files} files, none used by scan's selection)")
    keys, codes = [], []
    for batch in generator.iter_encode(files, on_error=lambda path, error: skipped.append(f"{path}: {error.reason}")):
        keys.extend(patients[str(split_source(source)[0])] for source in batch.sources)  # FILE#K: a frame
        codes.append(batch.mu)
    if not codes:
        raise InputError(data, f"none of the {len(files)} usable files could be read ({skipped[-1]})")
    train, val = _split(keys, split, seed)
    mu = np.concatenate(codes).astype(np.float64)
    table, best = [], None
    for count in components:
        if count > train.sum():
            continue
        mixture = GaussianMixture(count, covariance_type="full", reg_covar=1e-4, max_iter=300, n_init=1,
                                  random_state=seed).fit(mu[train])
        score = float(mixture.score(mu[val]))  # mean log-likelihood per validation slice
        table.append({"components": count, "val_log_likelihood": score, "train_log_likelihood":
                      float(mixture.score(mu[train])), "converged": bool(mixture.converged_)})
        if best is None or score > best[0] + 1e-9:
            best = (score, mixture)
    if best is None:
        raise InputError(data, f"too few training slices ({int(train.sum())}) for a mixture")
    mixture = best[1]
    prior = MixturePrior(mixture.weights_, mixture.means_, np.linalg.cholesky(mixture.covariances_))
    save_prior(prior, model_dir / PRIOR_FILE)
    section = {"file": PRIOR_FILE, "kind": "gaussian-mixture", "covariance": "full", "components": prior.components,
               "fitted_on": {"data": str(data), "split": None if split is None else str(split),
                             "train_slices": int(train.sum()), "val_slices": int(val.sum()),
                             "skipped_files": selection.files - selection.used + len(skipped),
                             "left_out": selection.left_out},
               "selection": {"rule": "highest mean log-likelihood of the validation slices' codes", "table": table},
               "command": command}

    def add_prior(card: dict[str, Any]) -> None:
        card["files"][PRIOR_FILE] = {"sha256": sha256_file(model_dir / PRIOR_FILE),
                                     "bytes": (model_dir / PRIOR_FILE).stat().st_size}
        card["prior"] = section

    update_card(model_dir, add_prior)
    return section


def _note_selection(selection: Any) -> None:
    if selection.left_out:
        print(selection.note, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.prior", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("--data", required=True, help="the training study (DICOM folder)")
    parser.add_argument("--split", help="the training run's split.json (its train and val patients)")
    parser.add_argument("--components", default=",".join(map(str, COMPONENTS)), help="mixture sizes to try")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    command = " ".join(["python -m export.prior", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    skipped: list[str] = []
    try:
        counts = tuple(int(item) for item in args.components.split(",") if item.strip())
        section = fit_prior(args.model_dir, args.data, split=args.split, components=counts, seed=args.seed,
                            command=command, skipped=skipped, on_selection=_note_selection)
    except (CtgenError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for line in skipped:
            print(f"warning: skipped {line}", file=sys.stderr)
        if skipped:
            print(f"warning: {len(skipped)} files of scan's selection could not be read", file=sys.stderr)
    chosen = next(row for row in section["selection"]["table"] if row["components"] == section["components"])
    print(f"wrote {Path(args.model_dir) / PRIOR_FILE}: {section['components']} components (validation "
          f"log-likelihood {chosen['val_log_likelihood']:.2f}); {Path(args.model_dir) / CARD_FILE} updated",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
