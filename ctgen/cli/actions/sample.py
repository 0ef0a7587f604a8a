"""The work of `ctgen sample`, without Typer: called by ctgen.cli.commands.sample (Typer) and by the
fast path (ctgen.cli.fast) with every option given."""

from __future__ import annotations

from pathlib import Path


def sample(
    *,
    n: int,
    temperature: float,
    prior: str,
    out: str | None,
    per_file: Path | None,
    file_format: str,
    seed: int,
    window: str,
    model: str | None,
    device: str,
    batch_size: int | None,
    force: bool,
    json_summary: bool,
    quiet: bool,
) -> None:
    """Draw N latents from the prior (the fitted mixture, or N(0, T²)) and decode them to CT slices."""
    from ctgen.cli.run import Run, check_targets, resolve_out
    from ctgen.render import parse_window
    from ctgen.writers import ImageOutputs

    with Run("sample", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        target = resolve_out(out, "samples.png", (".png", ".npy")) if out is not None or per_file is None else None
        generator = run.load_generator(model, device)
        prior = prior if prior != "auto" else "fitted" if generator.has_fitted_prior else "standard"
        batches = generator.iter_sample(n, seed=seed, temperature=temperature, prior=prior, batch_size=batch_size)
        width = max(5, len(str(n - 1)))
        outputs = ImageOutputs(generator, out=target, per_file=per_file, file_format=file_format,
                               names=[f"sample_{index:0{width}d}" for index in range(n)], window=display,
                               action=f"sample: {prior} prior, seed {seed}, temperature {temperature:g}, n {n}",
                               force=force)
        check_targets(outputs.targets, force=force)
        with outputs, run.progress(n, "sampling") as advance:
            for start, hu in batches:  # latents drawn batch by batch: flat memory for any --n
                outputs.write(start, hu)
                advance(len(hu))
        run.wrote(outputs.finish(title=f"{generator.card.name} · {prior} prior · seed {seed} · T {temperature:g}"),
                  "samples")
        run.finish(n=n, seed=seed, temperature=temperature, prior=prior)
