"""``python -m train.phantom``: write a synthetic brain-CT study (progress on stderr)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="Output folder (one subfolder per patient).")] = Path("data/phantom"),
    patients: Annotated[int, typer.Option(min=1, help="Number of synthetic patients (one series each).")] = 350,
    slices: Annotated[int, typer.Option(min=1, help="Axial slices per patient, skull base to vertex.")] = 28,
    seed: Annotated[int, typer.Option(min=0, help="Master seed: same seed, same pixels and table.")] = 0,
    levels: Annotated[Literal["even", "random"], typer.Option(
        help="Slice levels: evenly spaced, or drawn uniformly per patient (then sorted).")] = "even",
    first_patient: Annotated[int, typer.Option(
        min=1, help="Number (1-based) of the first patient in the seed's stream; past another run's last "
                    "patient, the patients are new to it.")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="Processes rendering patients in parallel.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing study.")] = False,
) -> None:
    """Render PATIENTS x SLICES CT slices from the MNI152 template with sampled factors of variation."""
    from rich import progress as bar
    from rich.console import Console

    from ctgen.errors import CtgenError
    from train.phantom.study import generate_study

    console = Console(stderr=True)
    started = time.perf_counter()
    columns = (bar.TextColumn("phantom"), bar.BarColumn(), bar.MofNCompleteColumn(), bar.TextColumn("patients"),
               bar.TimeElapsedColumn(), bar.TimeRemainingColumn())
    try:
        with bar.Progress(*columns, console=console) as progress:
            task = progress.add_task("phantom", total=patients)
            table = generate_study(out, patients, slices, seed, levels=levels, first_patient=first_patient,
                                   workers=workers, force=force,
                                   on_patient=lambda done: progress.update(task, completed=done))
    except CtgenError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started
    console.print(f"{patients * slices} slices of {patients} patients in {elapsed:.1f} s -> {table.parent}",
                  markup=False, highlight=False)
    print(table)


if __name__ == "__main__":
    sys.exit(app())
