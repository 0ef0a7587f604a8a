"""ctgen decode: latent vectors back to CT slices."""

from __future__ import annotations

from pathlib import Path

from ctgen.cli.options import Option, output, shared

OPTIONS = (
    Option("latents", metavar="LATENTS", required=True, show_default=False,
           help="A .npy, .npz, .csv or JSON lines file (as written by encode), or - for JSON lines/CSV on stdin."),
    output("Labelled grid .png (up to 1024 images), .npy stack in HU (N, S, S), or a folder (DIR/ gets "
           "decoded.png). Without --out and --per-file: decoded.png."),
    *shared("per_file", "file_format", "window", "model", "device", "batch_size"),
    Option("any_model", ("--any-model",), "bool", False,
           "Decode latents that their file says another model wrote (a warning instead of an error)."),
    *shared("force", "json_summary", "quiet"),
)


def decode(*, latents, out, per_file, file_format, window, model, device, batch_size, any_model, force, json_summary,
           quiet) -> None:
    """Decode latent vectors to CT slices: a grid PNG (decoded.png) and/or one file per vector.

    Every vector must have the model's latent size and finite values, and come from this model: latents
    whose file names another model (as encode records it in .npz, .csv and .jsonl) are refused unless
    --any-model is given; files that name no model are taken as they are. Per-file outputs are named
    decoded_00000.png, … in input order (as DICOM, each its own series). Pipes:
    ctgen encode scans/ | ctgen decode - -o recon.png
    """
    from ctgen.cli.run import Run
    from ctgen.errors import InputError
    from ctgen.io.latent_io import LatentModel, check_latents, latent_names, load_latents
    from ctgen.images.render import parse_window
    from ctgen.io.writers import ImageOutputs, check_targets, resolve_out

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
                               labels=latent_names(latents, len(vectors)))  # the rows' sources label the pictures
        check_targets(outputs.targets, force=force)
        with outputs, run.progress(len(vectors), "decoding") as advance:
            for start, hu in generator.iter_decode(vectors, batch_size=batch_size):
                outputs.write(start, hu)
                advance(len(hu))
        run.wrote(outputs.finish(title=f"decoded {Path(source).name} · {generator.card.name}"), "images")
        run.finish(count=len(vectors), source=source)
