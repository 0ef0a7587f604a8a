"""ctgen sample: draw latents from the prior and decode them."""

from __future__ import annotations

from ctgen.cli.options import Option, output, shared

OPTIONS = (
    Option("n", ("--n", "-n"), "int", 16, "Number of samples.", bounds="n"),
    Option("temperature", ("--temperature", "-t"), "float", 1.0, "Prior standard deviation T (lower: more typical).",
           bounds="temperature"),
    Option("prior", ("--prior",), "choice", "auto", choices=("auto", "fitted", "standard"),
           help="fitted: the mixture fitted to the training slices' codes (samples that look like heads); "
                "standard: N(0, I); auto: fitted when the model has one."),
    output("Labelled grid .png (up to 1024 samples), .npy stack of all samples in HU (N, S, S), or a folder "
           "(DIR/ gets samples.png). Without --out and --per-file: samples.png."),
    *shared("per_file", "file_format", "seed", "window", "model", "device", "batch_size", "force", "json_summary",
            "quiet"),
)


def sample(*, n, temperature, prior, out, per_file, file_format, seed, window, model, device, batch_size, force,
           json_summary, quiet) -> None:
    """Draw N latents from the prior (the fitted mixture, or N(0, T²)) and decode them to CT slices.

    Writes a labelled grid PNG (samples.png) and/or one file per sample with --per-file
    (sample_00000.png, …; as DICOM each sample is its own series). Decodes in batches: --n 10000
    --per-file runs in flat memory. The same --seed gives byte-identical files.
    """
    from ctgen.cli.run import Run
    from ctgen.images.render import parse_window
    from ctgen.io.writers import ImageOutputs, check_targets, resolve_out

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
