"""The work of `ctgen encode`, without Typer: called by ctgen.cli.commands.encode (Typer) and by the
fast path (ctgen.cli.fast) with every option given."""

from __future__ import annotations

import sys


def encode(
    *,
    inputs: list[str],
    out: str | None,
    logvar: bool,
    factors: bool,
    shard: str | None,
    skip_bad: bool,
    model: str | None,
    device: str,
    batch_size: int | None,
    force: bool,
    json_summary: bool,
    quiet: bool,
) -> None:
    """Encode CT slices to latent vectors (the posterior mean mu; --logvar adds log-variances)."""
    import numpy as np

    from ctgen.api import gather_files
    from ctgen.cli.run import Run, check_targets, resolve_out
    from ctgen.errors import ArgumentError, InputError
    from ctgen.latent import parse_shard, take_shard
    from ctgen.latent_io import LATENT_SUFFIXES, LatentModel, factor_columns, write_latents

    with Run("encode", quiet=quiet, json_summary=json_summary, force=force) as run:
        k, n = parse_shard(shard) if shard is not None else (1, 1)
        target = resolve_out(out, "latents.npz", LATENT_SUFFIXES) if out is not None else None
        if target is None and json_summary:
            raise ArgumentError("json_summary", "needs --out: without it stdout carries the JSON lines")
        for flag, given in (("logvar", logvar), ("factors", factors)):
            if target is not None and target.suffix.lower() == ".npy" and given:
                raise ArgumentError(flag, f"{target}: .npy holds mu only; use .npz, .csv or .jsonl")
        on_error = run.on_error(skip_bad)
        files = gather_files(_expand_stdin(inputs), on_error=on_error)
        if not files and not run.failures:
            raise InputError(None, f"no DICOM files found in {' '.join(inputs)}")
        ordered = take_shard(files, k, n)
        if target is not None:
            check_targets([target], force=force)
        generator = run.load_generator(model, device)
        if factors:
            generator.require_bound()

        def readings(mu):
            return factor_columns(generator.read_factors(mu)) if factors else None

        written_by = LatentModel.of(generator.card)
        if target is not None and target.suffix.lower() == ".npy":
            run.note(f"ctgen: note: {target} holds the numbers only, not which model wrote them (.npz, .csv and "
                     ".jsonl record it)")

        stream = target is None and skip_bad  # lines as they come; otherwise all or nothing
        batches, encoded = [], 0
        with run.progress(len(ordered), f"encoding shard {k}/{n}" if n > 1 else "encoding") as advance:
            for batch in generator.iter_encode(ordered, batch_size=batch_size, on_error=on_error):
                if stream:
                    _print_lines(batch.sources, batch.mu, batch.logvar if logvar else None, batch.warnings, written_by,
                                 readings(batch.mu))
                else:
                    batches.append(batch)
                encoded += len(batch.sources)
                advance(len(batch.sources))
        done = [source for batch in batches for source in batch.sources]
        found = [one for batch in batches for one in batch.warnings]  # iter_encode always fills them
        if not stream:
            empty = np.empty((0, generator.latent_size), np.float32)
            mu = np.concatenate([batch.mu for batch in batches]) if batches else empty
            log_variance = (np.concatenate([batch.logvar for batch in batches]) if batches else empty) if logvar else None
            if target is None:
                _print_lines(done, mu, log_variance, found, written_by, readings(mu))
            else:
                write_latents(target, done, mu, log_variance, force=force, model=written_by, warnings=found,
                              factors=readings(mu))
                run.wrote([{"kind": f"latents_{target.suffix.lower().lstrip('.')}", "path": str(target),
                            "count": len(done), "logvar": logvar,
                            "factors": list(readings(mu)) if factors else None}], "latent vectors")
        run.finish(encoded=encoded, failed=run.failures, shard=[k, n], files_in_shard=len(ordered))
        listed = set(map(str, ordered))
        run.exit_if_skipped(len(ordered) + sum(failure not in listed for failure in run.failures))


def _expand_stdin(inputs: list[str]) -> list[str]:
    """Replace "-" with the paths read from stdin, one per line."""
    items: list[str] = []
    for item in inputs:
        if item == "-":
            items.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            items.append(item)
    return items


def _print_lines(files, mu, logvar, warnings, model, factors=None) -> None:
    from ctgen.cli.run import write_stdout
    from ctgen.latent_io import json_line

    if len(files):
        write_stdout("".join(json_line(f, mu[i], None if logvar is None else logvar[i], warnings[i], model,
                                       {name: values[i] for name, values in (factors or {}).items()}) + "\n"
                             for i, f in enumerate(files)))
