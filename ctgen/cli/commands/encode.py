"""ctgen encode: DICOM slices to latent vectors, for many files at a time."""

from __future__ import annotations

import sys

from ctgen.cli.options import Option, output, shared

OPTIONS = (
    Option("inputs", (), "list", metavar="FILES/DIRS/-", required=True, show_default=False,
           help="DICOM files, NIfTI volumes (read as named), folders (scan's selection), or - for paths on stdin."),
    output("Write .npz (files, mu[, logvar]), .npy (mu), .csv or .jsonl instead of JSON lines on stdout; a "
           "folder (DIR/) gets latents.npz. All but .npy record the model, which decode checks."),
    Option("logvar", ("--logvar",), "bool", False, "Also write the posterior log-variances."),
    Option("factors", ("--factors",), "bool", False,
           "Also write the model's reading of each bound factor, in its unit of measure (ctgen info lists them): a "
           'key per factor on each JSON line ("rotation_deg": 3.2), a CSV column, an .npz array. decode ignores '
           "them."),
    Option("shard", ("--shard",), metavar="K/N", show_default=False,
           help="Encode only shard K of N (1-based) of the sorted file list: contiguous blocks, so shards 1..N "
                "concatenated give the whole list."),
    *shared("skip_bad", "model", "device", "batch_size", "force", "json_summary", "quiet"),
)


def encode(*, inputs, out, logvar, factors, shard, skip_bad, model, device, batch_size, force, json_summary,
           quiet) -> None:
    """Encode CT slices to latent vectors (the posterior mean mu; --logvar adds log-variances).

    Without --out, prints JSON lines on stdout: {"file": …, "mu": […], "model": …, "encoder_sha256": …}
    (the model that wrote them, which decode checks). A folder gives the files of scan's selection (those
    training and evaluate take; a note counts the others by reason, and --json records them under "folders");
    a file named is read as given. Rows follow the sorted file list; every axial slice of a NIfTI volume and every frame of a multi-frame file is encoded, named
    FILE#K. A slice unlike the model's training data (field of view, spacing, no brain, not axial) is
    encoded with a warning on stderr, recorded per slice in the output ("warnings") and in --json. A bad
    file stops the run with exit 1 and nothing written; with --skip-bad it is reported ("ctgen: skipped
    FILE: reason"), the rest is written, and the exit status is 1.
    """
    import numpy as np

    from ctgen.api import gather_files
    from ctgen.cli.run import Run, write_stdout
    from ctgen.errors import ArgumentError, InputError
    from ctgen.latent import parse_shard, take_shard
    from ctgen.io.latent_io import LATENT_SUFFIXES, LatentModel, factor_columns, json_lines, write_latents
    from ctgen.io.writers import check_targets, resolve_out

    with Run("encode", quiet=quiet, json_summary=json_summary, force=force) as run:
        k, n = parse_shard(shard) if shard is not None else (1, 1)
        target = resolve_out(out, "latents.npz", LATENT_SUFFIXES) if out is not None else None
        if target is None and json_summary:
            raise ArgumentError("json_summary", "needs --out: without it stdout carries the JSON lines")
        for flag, given in (("logvar", logvar), ("factors", factors)):
            if target is not None and target.suffix.lower() == ".npy" and given:
                raise ArgumentError(flag, f"{target}: .npy holds mu only; use .npz, .csv or .jsonl")
        on_error = run.on_error(skip_bad)
        files = gather_files(_expand_stdin(inputs), on_error=on_error, on_selection=run.selected)
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
                    write_stdout("".join(json_lines(batch.sources, batch.mu, batch.logvar if logvar else None,
                                                    model=written_by, warnings=batch.warnings,
                                                    factors=readings(batch.mu))))
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
                write_stdout("".join(json_lines(done, mu, log_variance, model=written_by, warnings=found,
                                                factors=readings(mu))))
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

