"""How a command declares its options: plain data, without Typer, read by both parsers.

Each command module (``ctgen.cli.commands``) holds ``OPTIONS``, a tuple of ``Option``, beside its body. The Typer
app (``ctgen.cli.typer_app``) makes Typer parameters of them; the fast path (``ctgen.cli.fast``) reads them as they
are, so both parse the same interface. Options that several commands share are declared once here (``shared``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["BOUNDS", "Option", "ROOT", "ROOT_SHARED", "output", "shared"]

# The range of every numeric option, declared with the option: a value outside is a usage error naming the
# option, before anything is read, allocated or computed (a seed numpy refuses, --n that overflows, 10^9
# traversal steps, an offset of 1e308).
BOUNDS: dict[str, dict[str, float]] = {
    "seed": {"min": 0, "max": 2**32 - 1},  # numpy takes any non-negative integer; 32 bits, as most tools
    "n": {"min": 1, "max": 10**6},  # streamed, but each file still costs about 0.6 kB of names and records
    "temperature": {"min": 0.0, "max": 100.0},  # prior standard deviations (0: the prior's means)
    "traverse_steps": {"min": 1, "max": 1000},
    "interpolate_steps": {"min": 2, "max": 1000},
    "batch_size": {"min": 1, "max": 4096},
    "slice": {"min": 0, "max": 2**31 - 1},
    "max_slices": {"min": 1, "max": 10**7},
    "diff_range": {"min": 1.0, "max": 10000.0},  # HU
    "max_pixels": {"min": 1, "max": 2**40},
    "max_tilt": {"min": 0.0, "max": 90.0},  # degrees
    "port": {"min": 0, "max": 65535},
}


@dataclass(frozen=True)
class Option:
    """One parameter of a command: an option when it has ``flags`` ("--n", "-n"), else a positional argument.

    ``kind`` says how its text is read: str, int, float, bool (a flag), path, choice (one of ``choices``) or
    list (of str: an argument that takes several, or an option given several times). Its value is None by
    default unless ``default`` says otherwise; ``required`` ones have none. ``bounds`` names a range in BOUNDS.
    The rest is Typer's: help text, metavar, environment variable, help panel, path checks.
    """

    name: str
    flags: tuple[str, ...] = ()
    kind: str = "str"
    default: Any = None
    help: str | None = None
    choices: tuple[str, ...] = ()
    bounds: str | None = None
    required: bool = False
    metavar: str | None = None
    envvar: str | None = None
    show_default: bool | str | None = None
    panel: str | None = None
    file_okay: bool = True
    dir_okay: bool = True

    @property
    def minimum(self) -> float | None:
        return BOUNDS[self.bounds]["min"] if self.bounds else None

    @property
    def maximum(self) -> float | None:
        return BOUNDS[self.bounds]["max"] if self.bounds else None

    @property
    def optional(self) -> bool:
        """Whether None is one of its values (it has no other default)."""
        return self.default is None and not self.required and self.kind != "bool"


_COMMON, _OUTPUT = "Common options", "Output"
_ROOT = "Common options (before the command: apply to every command that has them)"
DEVICES = ("auto", "cpu", "cuda")

_SHARED = {option.name: option for option in (
    Option("model", ("--model", "-m"), envvar="CTGEN_MODEL", metavar="NAME|PATH", panel=_COMMON,
           show_default="default", help="A model folder, or a NAME looked up in this order: ./models/NAME (working "
                                        "folder), then the shipped models."),
    Option("device", ("--device",), "choice", "auto", choices=DEVICES, envvar="CTGEN_DEVICE", panel=_COMMON,
           help="auto: CUDA when it really loads, else CPU; cuda: fail if CUDA cannot be used."),
    Option("quiet", ("--quiet", "-q"), "bool", False, "No progress, notes or tables on stderr.", panel=_COMMON),
    Option("json_summary", ("--json",), "bool", False, "Print a JSON summary of what was written on stdout.",
           panel=_COMMON),
    Option("force", ("--force", "-f"), "bool", False, "Overwrite existing output files.", panel=_COMMON),
    Option("window", ("--window", "-w"), "str", "brain", metavar="brain|subdural|bone|C,W", panel=_COMMON,
           help="Display window of PNG/GIF outputs: a preset or CENTER,WIDTH in HU."),
    Option("seed", ("--seed",), "int", 0, "Random seed: the same seed gives the same bytes.", bounds="seed",
           panel=_COMMON),
    Option("batch_size", ("--batch-size",), "int", None, "Images per inference batch.", bounds="batch_size",
           panel=_COMMON, show_default="16 of 128² on the CPU, fewer for larger images; the model's choice on CUDA"),
    Option("per_file", ("--per-file",), "path", None, "Also write one file per image into DIR (see --format).",
           metavar="DIR", panel=_OUTPUT, file_okay=False),
    Option("file_format", ("--format",), "choice", "png", choices=("png", "dcm", "npy"), panel=_OUTPUT,
           help="Format of --per-file files: png (windowed 8-bit), dcm (derived CT series), npy (float32 HU)."),
    Option("skip_bad", ("--skip-bad",), "bool", False,
           "Report unreadable slices on stderr and go on; exit 1 at the end if any failed."),
    Option("slice_index", ("--slice",), "int", None, bounds="slice", metavar="K",
           show_default="the middle one (n // 2), with a note",
           help="Slice K (0-based) of a NIfTI volume (axial, inferior first) or frame K of a multi-frame DICOM file; "
                "or name it FILE#K."),
)}


def shared(*names: str, **defaults: Any) -> tuple[Option, ...]:
    """The shared options of these names, in this order; ``defaults`` gives some of them another default."""
    return tuple(replace(_SHARED[name], default=defaults[name]) if name in defaults else _SHARED[name]
                 for name in names)


# root options that become the defaults of the command's options of the same name, with the root's short help
_ROOT_HELP = {"model": "Model name or folder.", "device": "Where to run.", "quiet": "No progress or notes.",
              "json_summary": "JSON summary on stdout.", "force": "Overwrite outputs.", "window": "Display window.",
              "seed": "Random seed."}
ROOT_SHARED = tuple(_ROOT_HELP)


def _root_option(name: str) -> Option:
    """A command's common option as the root takes it: in the root's panel, with no environment variable and,
    unless a flag, no default (only a given value becomes the command's default)."""
    option = replace(_SHARED[name], help=_ROOT_HELP[name], panel=_ROOT, envvar=None)
    return option if option.kind == "bool" else replace(option, default=None, show_default=False)


# The root's own options (before the command), --version aside: the Typer app adds it
ROOT = (
    Option("debug", ("--debug",), "bool", False, "Show full tracebacks on errors (or set CTGEN_DEBUG=1)."),
    *map(_root_option, ROOT_SHARED),
    Option("max_pixels", ("--max-pixels",), "int", bounds="max_pixels", metavar="N", envvar="CTGEN_MAX_PIXELS",
           show_default="2^26", panel=_ROOT,
           help="Refuse DICOM files and NIfTI volumes whose rows x columns x frames (slices) exceed N, before "
                "decoding them."),
)


def output(help: str, show_default: bool | str = False) -> Option:
    """--out PATH, in the Output panel: each command says what it writes there."""
    return Option("out", ("--out", "-o"), metavar="PATH", help=help, show_default=show_default, panel=_OUTPUT)
