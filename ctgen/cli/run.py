"""What the commands share: one ``Run`` per command (stderr notes, warnings and progress, --skip-bad
reporting, the --json summary) and stdout (``write_stdout``); the output targets are ``ctgen.io.writers``'
(``resolve_out``, ``check_targets``).

Every command checks *all* its targets before it computes anything, and the writers (``ctgen.io.writers``,
``ctgen.io.atomic``) commit each file exclusively, so a failed run leaves no half-written output. A ``Run`` holds
the transaction of every output its command commits: it is kept only when the command returns and stdout
has been flushed; whatever fails (a later file, stdout, an exception anywhere, Ctrl-C) takes them all back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ctgen.io.atomic import Claims
from ctgen.errors import CtgenError, OutputError

__all__ = ["Run", "drop_stdout", "rich_console", "write_stdout"]


class Run:
    """One command's session: stderr console, progress bars, warnings as one line, the --json summary."""

    def __init__(self, command: str, *, quiet: bool = False, json_summary: bool = False, force: bool = False):
        self.command = command
        self.quiet = quiet
        self.json_summary = json_summary
        self.force = force
        self._console = None
        self.summary: dict[str, Any] = {"command": command, "outputs": []}
        self.failures: list[str] = []
        self.outputs = Claims()  # every output this run commits (ctgen.io.atomic records them while it is open)
        self._finished = False
        self._warnings: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> Run:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("default")
        warnings.showwarning = self._show_warning
        self.outputs.__enter__()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        assert self._warnings is not None
        # a run succeeds when it returns, or exits after finish() (--skip-bad's exit 1 keeps what it wrote)
        succeeded = kind is None or (issubclass(kind, SystemExit) and self._finished)
        try:
            if succeeded:
                write_stdout("")  # the data must have reached stdout before the outputs are kept
        except BaseException:
            succeeded = False
            raise
        finally:
            self.outputs.close(keep=succeeded)
            self._warnings.__exit__(kind, value, traceback)

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warn(str(message))

    @property
    def console(self):
        """The Rich console on stderr (``rich_console``), made when first needed: Rich costs start-up time."""
        if self._console is None:
            self._console = rich_console(stderr=True)
        return self._console

    def note(self, text: str) -> None:
        """A line for people (not for scripts): on stderr unless --quiet."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def selected(self, selection: Any) -> None:
        """A folder read through scan's selection (``ctgen.io.sources.FolderSelection``): a note when files were
        left out, and its counts in --json ("folders")."""
        self.summary.setdefault("folders", []).append(selection.summary())
        if selection.left_out:
            self.note(selection.note)

    def warn(self, text: str) -> None:
        if not self.quiet:
            print(f"ctgen: warning: {text}", file=sys.stderr, flush=True)

    def table(self, renderable: Any) -> None:
        if not self.quiet:
            self.console.print(renderable)

    @contextlib.contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        """A Rich progress bar on stderr, shown only on an interactive terminal and without --quiet.

        Yields ``advance(count)``.
        """
        forced = any(os.environ.get(name) for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"))
        if self.quiet or not (forced or sys.stderr.isatty()):  # no bar to draw: no Rich to import
            yield lambda count=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        enabled = self.console.is_interactive
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not enabled,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda count=1: bar.advance(task, count)

    def load_generator(self, name_or_path: str | None, device: str):
        """Load the model as a ``ctgen.api.Generator`` and put it, with the provider really used, in the summary."""
        from ctgen.api import Generator
        from ctgen.runtime.model import load_model

        model = load_model(name_or_path, device=device)
        self.summary["model"] = {"name": model.card.name, "path": str(model.path), "provider": model.provider,
                                 "latent_size": model.latent_size, "image_size": model.grid.size}
        generator = Generator(model)
        generator.on_warnings = self.slice_warnings
        generator.on_notes = self.slice_note
        return generator

    def slice_note(self, source: str, note: str) -> None:
        """The pipeline picked the middle slice of a file: one note line on stderr (unless --quiet), and an entry
        under "notes" in the --json summary."""
        self.summary.setdefault("notes", []).append({"file": source, "note": note})
        self.note(f"ctgen: note: {note}; choose with --slice K")

    def slice_warnings(self, source: str, found: Sequence[str]) -> None:
        """A slice unlike the model's training data: one warning line on stderr, and an entry under "warnings"
        in the --json summary."""
        self.summary.setdefault("warnings", []).append({"file": source, "warnings": list(found)})
        self.warn(f"{source}: {'; '.join(found)}")

    def on_error(self, skip_bad: bool) -> Callable[[Any, CtgenError], None] | None:
        """The pipeline's error handler for --skip-bad: report "ctgen: skipped FILE: reason" and go on (None:
        the first bad input stops the run)."""
        if not skip_bad:
            return None

        def skipped(path: Any, error: CtgenError) -> None:
            print(f"ctgen: skipped {path}: {getattr(error, 'reason', error)}", file=sys.stderr, flush=True)
            self.failures.append(str(path))

        return skipped

    def exit_if_skipped(self, total: int) -> None:
        """After --skip-bad: a summary line on stderr and exit 1 when any input was skipped."""
        if self.failures:
            print(f"ctgen: {len(self.failures)} of {total} inputs failed and were skipped", file=sys.stderr,
                  flush=True)
            raise SystemExit(1)

    def wrote(self, records: list[dict[str, Any]], what: str, *, note: bool = True) -> None:
        """Record ``ctgen.io.writers`` output records in the summary and say on stderr what was written where."""
        for record in records:
            self.summary["outputs"].append(record)
            if note:
                count = record.get("count", 1)
                noun = what[:-1] if count == 1 and what.endswith("s") else what  # "1 sample", "2 samples"
                self.note(f"wrote {count} {noun} to {record['path']}")

    def write_files(self, files: Any, images: Any) -> None:
        """Write every image of a ``ctgen.io.writers.PerFile`` (--per-file) at once and record them."""
        with files:
            files.write(0, images)
        self.wrote([{"kind": f"per_file_{files.format}", "path": str(files.folder), "count": len(images),
                     "files": [str(path) for path in files.paths]}], "files")

    def finish(self, **extra: Any) -> None:
        """Print the --json summary (one JSON object on stdout)."""
        self.summary.update(extra)
        if self.json_summary:
            write_stdout(json.dumps(self.summary) + "\n")
        self._finished = True


def write_stdout(text: str) -> None:
    """Write ``text`` to stdout and flush it. Raises OutputError naming ``<stdout>`` when it cannot be written
    (a full disk); a closed pipe stays an OSError (EPIPE), which the CLI ends quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as error:
        if error.errno == errno.EPIPE:
            raise
        drop_stdout()
        raise OutputError("<stdout>", error.strerror or str(error)) from None


def drop_stdout() -> None:
    """Send stdout to /dev/null: what is still buffered would fail again when Python exits, with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a file (a test's captured stdout)


def rich_console(*, stderr: bool = False):
    """The Rich console of every table ctgen prints (stdout, or stderr with ``stderr``).

    On a terminal, Rich's own width. Written to a pipe or a file, Rich would assume 80 columns and wrap a table
    into one-letter columns and paths split mid-word (``ctgen info | less``, ``ctgen scan DIR 2> log``): there
    no row is wrapped, so each row is one line that grep and less can read whole.
    """
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:  # and no cell padded with spaces to the widest row's end (`ctgen info > x.txt`)
        console = Console(file=_Unpadded(sys.stderr if stderr else sys.stdout), highlight=False, soft_wrap=True,
                          width=PIPED_WIDTH)
    return console


PIPED_WIDTH = 10_000  # columns of a table written to a pipe or a file: wider than any row


class _Unpadded:
    """A text stream that drops the spaces at the end of each line it passes on (Rich pads every row of a table
    to the widest)."""

    def __init__(self, stream: Any):
        self.stream, self.pending = stream, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        if lines:
            self.stream.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False
