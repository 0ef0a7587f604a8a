"""ctgen evaluate: score a model on a DICOM study and write a report folder."""

from __future__ import annotations

from pathlib import Path

from ctgen.cli.options import Option, shared

OPTIONS = (
    Option("study", (), "path", metavar="STUDY_DIR", help="Folder of DICOM slices (recursive).", required=True,
           show_default=False),
    Option("factors", ("--factors",), "path", metavar="CSV", dir_okay=False,
           show_default="STUDY_DIR/factors.csv when present",
           help="Known factors of variation per slice (a phantom's factors.csv): scores disentanglement."),
    Option("split", ("--split",), "path", metavar="SPLIT.json", dir_okay=False, show_default=False,
           help="A training run's split.json: score held-out patients and check memorisation."),
    Option("dense", ("--dense",), "path", metavar="DIR", file_okay=False, show_default=False,
           help="A dense factor set (many unseen patients, few slices each, at random levels, with its own "
                "factors.csv): disentanglement and unit names are scored there too."),
    Option("max_slices", ("--max-slices",), "int", 2000, bounds="max_slices",
           help="Encode at most this many slices (a seeded choice; half held-out when the factors table names the "
                "patients)."),
    Option("out", ("--out", "-o"), "path", Path("report"), "Report folder (replaced only with --force).",
           file_okay=False, panel="Output"),
    Option("real", ("--real/--no-real",), "bool", True, "Also score the real CT slices pydicom ships."),
    *shared("seed", "model", "device", "force", "json_summary", "quiet"),
)


def evaluate(*, study, factors, split, dense, max_slices, out, real, seed, model, device, force, json_summary,
             quiet) -> None:
    """Score a model on a study: reconstruction, latent activity, disentanglement, memorisation.

    Encodes the study's slices and writes OUT/metrics.json, report.md (tables with one-line readings) and
    figures: kl_per_unit.png, traversal.png, samples.png, reconstructions.png and real_slices.png.
    Reconstruction error is in HU inside the head (PSNR and SSIM at brain window), on the held-out
    patients of --split (else on every slice). Disentanglement (MIG, β-VAE, FactorVAE, DCI, SAP and the
    unit that tracks each factor) needs a factors table. The memorisation check needs --split: it
    compares prior samples with every training slice of the study (read, not encoded). For a model with
    bound units: controllability, each unit set over ±2 SD on unseen patients and its factor measured on
    the output (slope, R², leakage; control_FACTOR.png).
    """
    from ctgen.evaluation.evaluate import card_metrics
    from ctgen.cli.run import Run
    from ctgen.evaluation.report import check_out, report_folder

    with Run("evaluate", quiet=quiet, json_summary=json_summary, force=force) as run:
        check_out(out, force)
        vae = run.load_generator(model, device).model
        stages = _Stages(run)
        try:
            report, figures = report_folder(vae, study, out, force=force, factors=factors, split=split, dense=dense,
                                            max_slices=max_slices, seed=seed, real=real, progress=stages)
        finally:
            stages.close()
        for line in report["interpretation"].values():
            run.note(line)
        run.note(f"wrote {out}/ (report.md, metrics.json, {len(figures)} figures)")
        run.wrote([{"kind": "json" if name.endswith(".json") else "markdown" if name.endswith(".md") else "png",
                    "path": str(out / name)} for name in ["metrics.json", "report.md", *figures]], "files", note=False)
        run.finish(metrics=card_metrics(report))


class _Stages:
    """``progress(stage, done, total)`` for the library -> one Rich bar per stage and a note when it starts."""

    def __init__(self, run):
        from contextlib import ExitStack

        self.run, self.stack, self.stage, self.done, self.advance = run, ExitStack(), None, 0, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.stack.close()
            self.stage, self.done = stage, 0
            self.run.note(f"{stage} {total} images")
            self.advance = self.stack.enter_context(self.run.progress(total, stage))
        self.advance(done - self.done)
        self.done = done

    def close(self) -> None:
        self.stack.close()
