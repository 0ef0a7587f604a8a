"""ctgen interpolate: walk the latent space between two slices."""

from __future__ import annotations

from pathlib import Path

from ctgen.cli.options import Option, output, shared
from ctgen.defaults import DEFAULT_INTERPOLATION, DEFAULT_INTERPOLATION_STEPS

OPTIONS = (
    Option("first", metavar="A.dcm", help="Slice at the start (a file, or VOLUME#K).", required=True,
           show_default=False),
    Option("second", metavar="B.dcm", help="Slice at the end.", required=True, show_default=False),
    *shared("slice_index"),
    Option("steps", ("--steps", "-s"), "int", DEFAULT_INTERPOLATION_STEPS, "Images in the strip, both ends included.",
           bounds="interpolate_steps"),
    Option("method", ("--method",), "choice", DEFAULT_INTERPOLATION, choices=("slerp", "lerp"),
           help="Great circle (keeps norms typical of the prior) or straight line."),
    output("Strip .png, or a folder (DIR/ gets interpolation.png).", "interpolation.png"),
    Option("gif", ("--gif",), "bool", False, "Also write an animated GIF next to the strip (same name, .gif).",
           panel="Output"),
    Option("with_originals", ("--with-originals",), "bool", False, "Put the two input slices beside the strip's ends.",
           panel="Output"),
    *shared("per_file", "file_format", "window", "model", "device", "force", "json_summary", "quiet"),
)


def interpolate(*, first, second, slice_index, steps, method, out, gif, with_originals, per_file, file_format, window,
                model, device, force, json_summary, quiet) -> None:
    """Encode two slices (their means), interpolate between them and decode.

    Writes a strip PNG (interpolation.png) whose ends are the two reconstructions; --gif adds an
    animation (interpolation.gif), --with-originals the inputs, --per-file one file per step (as DICOM,
    one ordered series that says what it is).
    """
    import numpy as np

    from ctgen.cli.run import Run
    from ctgen.images.render import PICTURE_PX, frames_loop, grid_image, labelled_frames, parse_window, save_gif, save_png
    from ctgen.io.writers import PerFile, check_targets, resolve_out

    with Run("interpolate", quiet=quiet, json_summary=json_summary, force=force) as run:
        display = parse_window(window)
        strip_path = resolve_out(out, "interpolation.png", (".png",))
        gif_path = strip_path.with_suffix(".gif") if gif else None
        generator = run.load_generator(model, device)
        ends = generator.load_all([first, second], with_hu=with_originals, slice_index=slice_index)
        names = (Path(ends[0].source).name, Path(ends[1].source).name)
        times = np.linspace(0.0, 1.0, steps)
        files = None
        if per_file is not None:
            action = f"interpolate: {method} from {names[0]} to {names[1]}, {steps} steps"
            files = PerFile(per_file, [f"interpolation_{index:03d}" for index in range(steps)], file_format,
                            window=display, card=generator.card, grid=generator.grid, action=action, force=force,
                            groups=[0] * steps, descriptions=[f"ctgen {method} path (not anatomy)"],
                            comments=[f"step {i + 1} of {steps}, t = {t:.3f}" for i, t in enumerate(times)])
        check_targets([strip_path, *([gif_path] if gif_path else []), *(files.paths if files else [])], force=force)

        mu = generator.encode(ends)
        frames = generator.interpolate(mu[0], mu[1], steps, method)

        steps_labels = ["A"] + [f"t={t:.2f}" for t in times[1:-1]] + ["B"]
        tiles, labels = list(frames), steps_labels
        if with_originals:
            tiles, labels = [ends[0].hu, *tiles, ends[1].hu], ["A input", *labels, "B input"]
        title = f"{names[0]} to {names[1]} · {method} · {generator.card.name}"
        save_png(grid_image(np.stack(tiles), display, rows=1, cols=len(tiles), col_labels=labels, title=title,
                            tile_px=PICTURE_PX), strip_path, force=force)
        run.wrote([{"kind": "strip_png", "path": str(strip_path), "count": steps}], "images")
        if gif_path is not None:
            save_gif(frames_loop(labelled_frames(frames, display, steps_labels)), gif_path, force=force)
            run.wrote([{"kind": "gif", "path": str(gif_path), "count": 2 * steps - 2}], "frames")
        if files is not None:
            run.write_files(files, frames)
        run.finish(method=method, steps=steps, inputs=[end.source for end in ends])
