"""ctgen encode: DICOM slices to latent vectors, for many files at a time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ctgen.cli.options import (
    BatchOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    ModelOption,
    QuietOption,
    SkipBadOption,
)


def encode(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="FILES/DIRS/-", help="DICOM files, folders (recursive), or - to read paths from stdin.",
                       show_default=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write .npz (files, mu[, logvar]), .npy (mu), .csv or .jsonl instead of "
                     "JSON lines on stdout; a folder gets latents.npz.", show_default=False,
                     rich_help_panel="Output"),
    ] = None,
    logvar: Annotated[bool, typer.Option("--logvar", help="Also write the posterior log-variances.")] = False,
    shard: Annotated[
        str | None,
        typer.Option("--shard", metavar="K/N", help="Encode only shard K of N (1-based) of the sorted file list: "
                     "contiguous blocks, so shards 1..N concatenated give the whole list.", show_default=False),
    ] = None,
    skip_bad: SkipBadOption = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: BatchOption = None,
    force: ForceOption = False,
    json_summary: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode CT slices to latent vectors (the posterior mean mu; --logvar adds log-variances).

    Without --out, prints JSON lines on stdout: {"file": …, "mu": […]}. Rows follow the sorted file
    list. A bad file stops the run with exit 1 and nothing written; with --skip-bad it is reported
    ("ctgen: skipped FILE: reason"), the rest is written, and the exit status is 1.
    """
    import numpy as np

    from ctgen.cli.commands._images import batch_size_for
    from ctgen.cli.commands._latent_files import LATENT_SUFFIXES, json_line, write_latents
    from ctgen.cli.commands._slices import iter_on_grid
    from ctgen.dicom import iter_dicom_files
    from ctgen.errors import CtgenError, InputError
    from ctgen.latent import parse_shard, take_shard
    from ctgen.outputs import Run, check_targets, resolve_out

    with Run("encode", quiet=quiet, json_summary=json_summary, force=force) as run:
        k, n = parse_shard(shard) if shard is not None else (1, 1)
        target = resolve_out(out, "latents.npz", LATENT_SUFFIXES) if out is not None else None
        if target is None and json_summary:
            raise InputError("--json", "needs --out: without it stdout carries the JSON lines")
        if target is not None and target.suffix.lower() == ".npy" and logvar:
            raise InputError("--logvar", f"{target}: .npy holds mu only; use .npz, .csv or .jsonl")
        failures: list[str] = []

        def bad(path, error: CtgenError) -> None:
            if not skip_bad:
                raise error
            reason = getattr(error, "reason", str(error))
            print(f"ctgen: skipped {path}: {reason}", file=sys.stderr, flush=True)
            failures.append(str(path))

        files: set[Path] = set()
        for item in _expand_stdin(inputs):
            try:
                files.update(iter_dicom_files([item]))
            except CtgenError as error:
                bad(item, error)
        if not files and not failures:
            raise InputError(None, f"no DICOM files found in {' '.join(inputs)}")
        ordered = take_shard(sorted(files, key=str), k, n)
        if target is not None:
            check_targets([target], force=force)
        vae = run.load_model(model, device)

        step = batch_size_for(vae, batch_size)
        stream = target is None and skip_bad  # stream lines as they come; otherwise all or nothing
        done_files: list[str] = []
        mus: list[np.ndarray] = []
        logvars: list[np.ndarray] = []
        batch_paths: list[str] = []
        batch_images: list[np.ndarray] = []

        def flush() -> None:
            if not batch_images:
                return
            mu, log_variance = vae.encode(np.stack(batch_images)[:, None])
            if stream:
                lines = [json_line(f, mu[i], log_variance[i] if logvar else None) for i, f in enumerate(batch_paths)]
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()
            else:
                mus.append(mu)
                logvars.append(log_variance)
            done_files.extend(batch_paths)
            advance(len(batch_paths))
            batch_paths.clear()
            batch_images.clear()

        with run.progress(len(ordered), f"encoding shard {k}/{n}" if n > 1 else "encoding") as advance:
            readers = 1 if vae.provider == "CPUExecutionProvider" else 4  # on the CPU, ORT needs the cores
            for path, loaded in iter_on_grid(ordered, vae.grid, lookahead=max(64, 2 * step), workers=readers):
                if isinstance(loaded, CtgenError):
                    bad(path, loaded)
                    advance(1)
                    continue
                batch_paths.append(str(path))
                batch_images.append(loaded.image)
                if len(batch_images) == step:
                    flush()
            flush()

        if not stream:
            width = vae.latent_size
            mu_all = np.concatenate(mus) if mus else np.empty((0, width), np.float32)
            logvar_all = (np.concatenate(logvars) if logvars else np.empty((0, width), np.float32)) if logvar else None
            if target is None:
                for index, file in enumerate(done_files):
                    sys.stdout.write(json_line(file, mu_all[index], None if logvar_all is None else logvar_all[index])
                                     + "\n")
                sys.stdout.flush()
            else:
                write_latents(target, done_files, mu_all, logvar_all, force=force, model_name=vae.card.get("name"))
                run.record(f"latents_{target.suffix.lower().lstrip('.')}", target, count=len(done_files),
                           logvar=logvar)
                run.note(f"wrote {len(done_files)} latent vectors to {target}")
        run.finish(encoded=len(done_files), failed=failures, shard=[k, n], files_in_shard=len(ordered))
        if failures:
            print(f"ctgen: {len(failures)} of {len(ordered) + _outside(failures, ordered)} inputs failed "
                  f"and were skipped", file=sys.stderr, flush=True)
            raise typer.Exit(1)


def _expand_stdin(inputs: list[str]) -> list[str]:
    """Replace "-" with the paths read from stdin, one per line."""
    items: list[str] = []
    for item in inputs:
        if item == "-":
            items.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            items.append(item)
    return items


def _outside(failures: list[str], ordered) -> int:
    """Failures that never made it into the file list (missing paths)."""
    listed = {str(path) for path in ordered}
    return sum(1 for failure in failures if failure not in listed)
