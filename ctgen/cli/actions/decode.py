"""The work of `ctgen decode`, without Typer: called by ctgen.cli.commands.decode (Typer) and by the
fast path (ctgen.cli.fast) with every option given."""

from __future__ import annotations

from pathlib import Path


def decode(
    *,
    latents: str,
    out: str | None,
    per_file: Path | None,
    file_format: str,
    window: str,
    model: str | None,
    device: str,
    batch_size: int | None,
    any_model: bool,
    force: bool,
    json_summary: bool,
    quiet: bool,
) -> None:
    """Decode latent vectors to CT slices: a grid PNG (decoded.png) and/or one file per vector."""
    from ctgen.cli.run import Run, check_targets, resolve_out
    from ctgen.errors import InputError
    from ctgen.latent_io import LatentModel, check_latents, load_latents
    from ctgen.render import parse_window
    from ctgen.writers import ImageOutputs

    from ctgen.latent_io import latent_names  # the rows' source names, for the pictures' labels

    with Run("decode", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        target = resolve_out(out, "decoded.png", (".png", ".npy")) if out is not None or per_file is None else None
        latent_file = load_latents(latents)
        vectors = latent_file.vectors
        source = "<stdin>" if latents == "-" else latents
        generator = run.load_generator(model, device)
        ours = LatentModel.of(generator.card)
        theirs = latent_file.foreign(ours)
        if theirs is not None:
            reason = f"written by model {theirs}, not by {ours}"
            if not any_model:
                advice = f"--model {theirs.name}" if theirs.name != ours.name else "--model with its folder"
                raise InputError(source, f"{reason}; pass {advice}, or --any-model to decode them all the same")
            run.warn(f"{source}: {reason}; decoding them all the same (--any-model)")
        check_latents(vectors, generator.latent_size, source)
        width = max(5, len(str(len(vectors) - 1)))
        outputs = ImageOutputs(generator, out=target, per_file=per_file, file_format=file_format,
                               names=[f"decoded_{index:0{width}d}" for index in range(len(vectors))],
                               window=display, action=f"decode {Path(source).name}", force=force,
                               labels=latent_names(latents, len(vectors)))
        check_targets(outputs.targets, force=force)
        with outputs, run.progress(len(vectors), "decoding") as advance:
            for start, hu in generator.iter_decode(vectors, batch_size=batch_size):
                outputs.write(start, hu)
                advance(len(hu))
        run.wrote(outputs.finish(title=f"decoded {Path(source).name} · {generator.card.name}"), "images")
        run.finish(count=len(vectors), source=source)
