"""Grid of training runs: ``python -m studies.sweep --data DIR --out runs/sweep --latent 10,20,50,100,500 --beta 1``.

Every (latent, beta) pair trains as ``<out>/latent<L>_beta<β>/`` with the other options shared, one after
the other, all reading the same slice cache. ``<out>/sweep.csv`` and ``<out>/sweep.md`` list each run's best
epoch: validation loss, reconstruction error, KL, active units. With --resume finished runs are only read.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["run_sweep", "run_name", "parse_list", "COLUMNS"]

COLUMNS = [
    "latent", "beta", "capacity_max", "best_epoch", "val_loss", "val_recon", "recon_mae_hu", "val_kl",
    "active_units", "epochs", "run",
]  # fmt: skip


def parse_list(text: str, kind: type) -> list:
    from ctgen.errors import InputError

    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise InputError(None, f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    if not values:
        raise InputError(None, f"empty list {text!r}")
    return values


def _best_row(run: Path) -> dict[str, Any]:
    import json

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return min(lines, key=lambda m: m.get("val_loss", m["train_loss"]))


def run_name(latent: int, beta: float) -> str:
    """The run folder of one grid point: latent50_beta2, latent50_beta0p5."""
    return f"latent{latent}_beta{beta:g}".replace(".", "p")


def run_sweep(base, latents: list[int], betas: list[float], *, command: str = "") -> list[dict[str, Any]]:
    """Train every (latent, beta) of the grid with the other settings of ``base`` (a TrainConfig).

    Returns the table rows (COLUMNS) and writes sweep.csv and sweep.md under ``base.out``.
    """
    from train.train import train

    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for latent in latents:
        for beta in betas:
            run = out / run_name(latent, beta)
            cfg = replace(base, latent=latent, beta=beta, out=str(run))
            train(cfg, command=f"{command}  # grid point latent={latent} beta={beta:g}")
            best = _best_row(run)
            rows.append({
                "latent": latent, "beta": beta, "capacity_max": base.capacity_max, "best_epoch": best["epoch"],
                "val_loss": best.get("val_loss"), "val_recon": best.get("val_recon"),
                "recon_mae_hu": best.get("recon_mae_hu"), "val_kl": best.get("val_kl"),
                "active_units": best.get("active_units"), "epochs": cfg.epochs, "run": run.name,
            })  # fmt: skip
            _write_tables(out, rows, command)  # after every run, so a long sweep shows progress
    return rows


def _write_tables(out: Path, rows: list[dict[str, Any]], command: str) -> None:
    def text(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out / "sweep.csv").write_text(buffer.getvalue())
    lines = [
        "# β-VAE sweep",
        "",
        f"`{command}`" if command else "",
        "",
        "Best epoch of each run by validation loss. Reconstruction: squared error summed over the pixels of an",
        "image (window units), mean over images; MAE in HU of decode(mu); KL in nats summed over units;",
        "active units: KL > 0.01 nats.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(text(row[c]) for c in COLUMNS) + " |" for row in rows),
        "",
    ]
    (out / "sweep.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    from ctgen.errors import CtgenError
    from train import ddp
    from train.__main__ import add_arguments, command_line, config_from_args

    parser = argparse.ArgumentParser(prog="python -m studies.sweep", description="Train a grid of latent sizes and βs.")
    add_arguments(parser, grid_types=True)
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required")
    try:
        latents, betas = parse_list(args.latent, int), parse_list(args.beta, float)
        args.latent, args.beta = latents[0], betas[0]
        rows = run_sweep(config_from_args(args), latents, betas, command=command_line("studies.sweep", argv))
    except CtgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        ddp.shutdown()
    print(Path(args.out) / "sweep.md", file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
