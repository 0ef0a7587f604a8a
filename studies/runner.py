"""Studies run through the command line, the way a user would: each run trained by ``python -m train``, exported
by ``python -m export`` and scored by ``ctgen evaluate`` on fixed unseen phantom sets, into one table.

Command lines are built as strings (lists of arguments), so a study does not depend on how ``train`` parses them
today. The rule that picks a run, and the targets it is judged against, are written into the report
(``rule.md`` and the head of ``report.md``) before any run is scored; a study whose rule file already holds a
different rule refuses to start (delete the report folder to begin a new study).

The evaluation sets, made once by ``python -m train.phantom`` with seeds no training run uses:

- ``series``: SERIES_PATIENTS unseen patients x SERIES_SLICES evenly spaced slices (whole series): reconstruction,
  sharpness, realism and controllability (level and the series' head size need whole series);
- ``random``: RANDOM_PATIENTS unseen patients x RANDOM_SLICES slices at random levels: disentanglement (MIG, DCI,
  normalised MI), passed to ``ctgen evaluate --dense``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EVAL_SEEDS", "Run", "evaluation_sets", "parse_study_args", "row_from_report", "run_plan", "run_study",
           "study_main", "table_markdown", "targets_markdown", "write_report", "write_rule"]

EVAL_SEEDS = {"series": 90101, "random": 90102}  # phantom seeds that no training run uses
SERIES_PATIENTS, SERIES_SLICES = 200, 16
RANDOM_PATIENTS, RANDOM_SLICES = 400, 2
NMI_MIN = 0.5  # a factor is carried by one unit when its best unit's normalised MI reaches this


@dataclass
class Run:
    """One run of a study: its name and the arguments it adds to the shared training command line."""

    name: str
    train_args: list[str] = field(default_factory=list)


def phantom_command(out: Path, patients: int, slices: int, seed: int, levels: str) -> list[str]:
    return [sys.executable, "-m", "train.phantom", "--out", str(out), "--patients", str(patients), "--slices",
            str(slices), "--seed", str(seed), "--levels", levels]


def train_command(data: str, run_dir: Path, base_args: list[str], run: Run) -> list[str]:
    return [sys.executable, "-m", "train", "--data", data, "--out", str(run_dir), *base_args, *run.train_args]


def export_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "export", str(run_dir), "--out", str(run_dir / "model"), "--name",
            f"study-{run_dir.name}", "--force"]


def evaluate_command(run_dir: Path, sets: dict[str, Path], seed: int, max_slices: int) -> list[str]:
    return [sys.executable, "-m", "ctgen", "evaluate", str(sets["series"]), "--dense", str(sets["random"]),
            "--model", str(run_dir / "model"), "--out", str(run_dir / "report"), "--max-slices", str(max_slices),
            "--seed", str(seed), "--force", "--quiet"]


def evaluation_sets(root: Path, *, sizes: dict[str, tuple[int, int]] | None = None,
                    execute=None) -> dict[str, Path]:
    """The two unseen phantom sets under ``root`` (made when absent): {"series": path, "random": path}."""
    sizes = sizes or {"series": (SERIES_PATIENTS, SERIES_SLICES), "random": (RANDOM_PATIENTS, RANDOM_SLICES)}
    execute = execute or _execute
    sets = {}
    for kind, levels in (("series", "even"), ("random", "random")):
        patients, slices = sizes[kind]
        folder = root / f"{kind}_{patients}x{slices}_seed{EVAL_SEEDS[kind]}"
        if not (folder / "factors.csv").is_file():
            execute(phantom_command(folder, patients, slices, EVAL_SEEDS[kind], levels), root / "phantom.log")
        sets[kind] = folder
    return sets


def _execute(command: list[str], log: Path) -> None:
    """Run ``command``, its output appended to ``log``; a failure raises RuntimeError naming the command."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if result.returncode:
        raise RuntimeError(f"exit {result.returncode}: {shlex.join(command)} (see {log})")


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime >= than.stat().st_mtime


def run_plan(plan: list[Run], *, data: str, base_args: list[str], epochs: int, runs_dir: Path, sets: dict[str, Path],
             seed: int, max_slices: int, execute=None) -> dict[str, dict]:
    """Train, export and evaluate every run (a finished step is not redone); returns metrics.json by run name."""
    from studies.study import _metrics_lines

    execute = execute or _execute
    reports = {}
    for run in plan:
        run_dir = runs_dir / run.name
        log = run_dir.parent / f"{run.name}.log"
        if len(_metrics_lines(run_dir)) < epochs or not (run_dir / "checkpoint_best.pt").is_file():
            execute(train_command(data, run_dir, [*base_args, "--epochs", str(epochs), "--force"], run), log)
        checkpoint, card, metrics = (run_dir / "checkpoint_best.pt", run_dir / "model" / "model.json",
                                     run_dir / "report" / "metrics.json")
        if not _newer(card, checkpoint):
            execute(export_command(run_dir), log)
        if not _newer(metrics, card):
            execute(evaluate_command(run_dir, sets, seed, max_slices), log)
        reports[run.name] = json.loads(metrics.read_text())
        print(f"study: {run.name} scored", file=sys.stderr, flush=True)
    return reports


def write_rule(report_dir: Path, *, title: str, rule: str, targets: list[str], plan: list[Run],
               settings: dict[str, Any]) -> str:
    """rule.md (the rule, the targets and the plan, with the time written) and a report.md that holds only them,
    before any run is scored. Returns the time the rule was written (ISO, UTC). Raises RuntimeError when
    rule.md already holds a different rule or plan."""
    report_dir.mkdir(parents=True, exist_ok=True)
    body = _rule_text(title, rule, targets, plan, settings)
    path = report_dir / "rule.md"
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if old.split("\n", 2)[2] != body:
            raise RuntimeError(f"{path}: a different rule or plan was written before; delete {report_dir} to start "
                               "a new study")
        return old.split("\n", 2)[0].removeprefix("Written ")
    written = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(f"Written {written}\n\n{body}", encoding="utf-8")
    (report_dir / "report.md").write_text(f"{body}\n_Rule written {written}; no run scored yet._\n", encoding="utf-8")
    return written


def _rule_text(title: str, rule: str, targets: list[str], plan: list[Run], settings: dict[str, Any]) -> str:
    runs = "\n".join(f"- `{run.name}`: `{shlex.join(run.train_args) or '(the shared arguments only)'}`" for run in plan)
    shared = ", ".join(f"{key} {value}" for key, value in settings.items())
    return (f"# {title}\n\n## The rule, written before any run was scored\n\n{rule}\n\n## Targets\n\n"
            + "\n".join(f"- {target}" for target in targets) + f"\n\n## Runs\n\n{runs}\n\nShared: {shared}.\n")


def row_from_report(name: str, report: dict) -> dict[str, Any]:
    """The table's figures of one run from its ``ctgen evaluate`` metrics.json (None where not scored)."""
    sharp = report.get("sharpness") or {}
    ratios, anatomy = sharp.get("band_power_ratio") or {}, sharp.get("anatomy") or {}
    realism = report.get("realism") or {}
    prior = "fitted" if "samples_fitted" in realism else "standard"
    samples = realism.get(f"samples_{prior}") or {}
    dense = report.get("disentanglement_dense") or {}
    nmi = {factor: entry["nmi"] for factor, entry in (dense.get("units") or {}).items()}
    control = {factor: {key: entry.get(key) for key in ("slope", "r2", "leakage_max", "leakage_max_factor")}
               for factor, entry in ((report.get("controllability") or {}).get("factors") or {}).items()
               if "skipped" not in entry}
    return {
        "run": name, "mae_hu_window": (report.get("reconstruction") or {}).get("mae_hu_window"),
        "recon_bands": ratios.get("reconstructions"), "sample_bands": ratios.get(f"samples_{prior}"),
        "tissue_csf_kept": anatomy.get("tissue_csf_contrast_kept"), "csf_dice": anatomy.get("csf_dice"),
        "sample_precision": samples.get("precision"), "sample_recall": samples.get("recall"),
        "heldout_precision": (realism.get("heldout_b") or {}).get("precision"),
        "anatomy_fail": ((realism.get("anatomy") or {}).get(f"samples_{prior}") or {}).get("fail_share"),
        "mig": dense.get("mig"), "dci_disentanglement": dense.get("dci_disentanglement"), "nmi": nmi,
        "carried": sorted(factor for factor, value in nmi.items() if value >= NMI_MIN), "control": control}


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """One table: sharpness, anatomy kept, brain-window MAE, realism, disentanglement and controllability."""
    from ctgen.evaluation.report import markdown_table

    bands = sorted({band for row in rows for band in (row["recon_bands"] or {})})
    header = ["run", *(f"recon power {band}" for band in bands), *(f"sample power {band}" for band in bands),
              "tissue-CSF kept", "CSF Dice", "MAE brain window (HU)", "sample precision", "sample recall",
              "held-out precision", "samples failing anatomy", "MIG", "DCI D", f"factors with nMI ≥ {NMI_MIN:g}",
              "controllability (slope / R² / max leakage)"]
    table = [[row["run"], *((row["recon_bands"] or {}).get(band) for band in bands),
              *((row["sample_bands"] or {}).get(band) for band in bands), row["tissue_csf_kept"], row["csf_dice"],
              row["mae_hu_window"], row["sample_precision"], row["sample_recall"], row["heldout_precision"],
              row["anatomy_fail"], row["mig"], row["dci_disentanglement"],
              f"{len(row['carried'])}: {', '.join(row['carried'])}" if row["carried"] else "0",
              "; ".join(f"{factor} {_fmt(entry['slope'])} / {_fmt(entry['r2'])} / {_fmt(entry['leakage_max'])}"
                        for factor, entry in row["control"].items()) or "-"] for row in rows]
    return markdown_table(header, table)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(report_dir: Path, *, rule_written: str, rows: list[dict[str, Any]], chosen: str, why: str,
                 command: str, commands: dict[str, str] | None = None, extra: list[str] = ()) -> None:
    """report.md: the rule and targets as written before scoring, the table, the choice; study.json the rows.
    ``command``: this call's command line; ``commands``: run name -> the command line that scored it (runs
    scored by earlier calls under the same rule), else ``command`` for every row."""
    body = (report_dir / "rule.md").read_text(encoding="utf-8").split("\n", 2)[2]
    by_run = commands or {row["run"]: command for row in rows}
    calls: dict[str, list[str]] = {}
    for name, line in by_run.items():
        calls.setdefault(line, []).append(name)
    scored_by = [f"`{line}`" if len(calls) == 1 else f"`{line}` (scored {', '.join(names)})"
                 for line, names in calls.items()]
    text = [body.rstrip(), f"_Rule written {rule_written}, before the first run was scored._", *scored_by,
            "## Results", table_markdown(rows),
            "Power kept per band: radially averaged power of the images over the originals' (1 keeps the detail). "
            "Tissue-CSF kept and CSF Dice: reconstructions against their originals at ventricle levels. Realism: "
            "improved precision and recall of the samples; held-out precision is what real slices of other patients "
            "score. Disentanglement on the random-level set; controllability on the series set (ctgen evaluate).",
            *extra, f"**Chosen by the rule:** {chosen}: {why}."]
    (report_dir / "report.md").write_text("\n\n".join(text) + "\n", encoding="utf-8")
    (report_dir / "study.json").write_text(json.dumps({"command": command, "commands": by_run,
                                                       "rule_written": rule_written, "rows": rows, "chosen": chosen,
                                                       "why": why}, indent=1) + "\n")


def parse_study_args(argv: list[str] | None, prog: str, doc: str,
                     defaults: dict[str, Any]) -> tuple[argparse.Namespace, list[str]]:
    """The options a study script shares; what follows ``--`` goes to every training command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--data", required=True, help="training data (DICOM folder, e.g. a phantom study)")
    parser.add_argument("--out", type=Path, default=defaults["out"], help="runs folder (one subfolder per run)")
    parser.add_argument("--report", type=Path, default=defaults["report"], help="report folder")
    parser.add_argument("--sets", type=Path, default=Path("data/eval"), help="where the unseen evaluation sets are "
                        "made (once)")
    parser.add_argument("--epochs", type=int, default=20, help="every run's budget in epochs (the same for all)")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed")
    parser.add_argument("--max-slices", type=int, default=2000, help="slices each evaluation encodes")
    parser.add_argument("--series", type=int, nargs=2, default=None, metavar=("PATIENTS", "SLICES"),
                        help="size of the unseen series set (default: studies.runner)")
    parser.add_argument("--random", type=int, nargs=2, default=None, metavar=("PATIENTS", "SLICES"),
                        help="size of the unseen random-level set (default: studies.runner)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=None, metavar="RUN,...",
                        help="run only these runs of the plan (the rule still names the whole plan)")
    for name, (kind, default, text) in defaults.get("options", {}).items():
        parser.add_argument(name, type=kind, default=default, help=text)
    args = parser.parse_args(argv)
    args.sizes = {"series": tuple(args.series or (SERIES_PATIENTS, SERIES_SLICES)),
                  "random": tuple(args.random or (RANDOM_PATIENTS, RANDOM_SLICES))}
    return args, train_args


def targets_markdown(rows: list[dict[str, Any]], targets_met: Callable[[dict], dict[str, bool]]) -> str:
    """Which run meets which target: a yes/no table."""
    from ctgen.evaluation.report import markdown_table

    names = list(targets_met(rows[0]))
    return markdown_table(["run", *names], [[row["run"], *("yes" if ok else "no" for ok in targets_met(row).values())]
                                           for row in rows])


def run_study(args: argparse.Namespace, train_args: list[str], command: str, *, title: str, doc: str,
              targets: list[str], plan: list[Run], choose: Callable, targets_met: Callable,
              execute: Callable | None = None) -> list[dict[str, Any]]:
    """A study from start to end: the rule (``doc`` after "The rule (``choose``), fixed before any of these runs was
    scored: "), the targets and the whole plan written; the evaluation sets made; every run (of ``args.only`` when
    given) trained, exported and scored; the table and the choice written. ``execute(command, log)`` runs a command
    line (tests replace it)."""
    unknown = sorted(set(args.only or ()) - {run.name for run in plan})
    if unknown:
        raise RuntimeError(f"--only names no run of the plan: {', '.join(unknown)}")
    settings = {"data": args.data, "epochs": args.epochs, "training arguments": shlex.join(train_args) or "-",
                "evaluation seeds": EVAL_SEEDS, "evaluation sets": args.sizes, "seed": args.seed}
    rule = doc.split("The rule (``choose``), fixed before any of these runs was scored: ")[1].strip()
    written = write_rule(args.report, title=title, rule=rule[0].upper() + rule[1:],
                         targets=targets, plan=plan, settings=settings)
    sets = evaluation_sets(args.sets, sizes=args.sizes, execute=execute)
    todo = [run for run in plan if not args.only or run.name in args.only]
    reports = run_plan(todo, data=args.data, base_args=train_args, epochs=args.epochs, runs_dir=args.out, sets=sets,
                       seed=args.seed, max_slices=args.max_slices, execute=execute)
    scored = {name: row_from_report(name, report) for name, report in reports.items()}
    commands = {name: command for name in scored}
    earlier = _earlier_rows(args.report, written)
    for name, (row, by) in earlier.items():  # runs scored by an earlier call under this very rule and plan
        if name not in scored:
            scored[name], commands[name] = row, by
    rows = [scored[run.name] for run in plan if run.name in scored]
    chosen, why = choose(rows)
    left = [run.name for run in plan if run.name not in scored]
    write_report(args.report, rule_written=written, rows=rows, chosen=chosen["run"], why=why, command=command,
                 commands=commands,
                 extra=["### Targets met", targets_markdown(rows, targets_met)]
                 + ([f"Runs of the plan not run yet: {', '.join(left)}."] if left else []))
    return rows


def _earlier_rows(report_dir: Path, rule_written: str) -> dict[str, tuple[dict[str, Any], str]]:
    """Rows that an earlier call of the same study wrote to study.json under the rule written at ``rule_written``
    (write_rule has checked that the rule and the plan are the same): run name -> (row, its command)."""
    path = report_dir / "study.json"
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("rule_written") != rule_written:
        return {}
    commands = saved.get("commands") or {row["run"]: saved.get("command", "") for row in saved["rows"]}
    return {row["run"]: (row, commands.get(row["run"], "")) for row in saved["rows"]}


def study_main(argv: list[str] | None, module: str, doc: str, defaults: dict[str, Any], run: Callable) -> int:
    """A study script's main: parse (``parse_study_args``), ``run(args, train_args, command)``, one line per error."""
    args, train_args = parse_study_args(argv, f"python -m {module}", doc, defaults)
    command = shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
    try:
        run(args, train_args, command)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(args.report / "report.md", file=sys.stderr)
    return 0
