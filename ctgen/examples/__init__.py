"""Example CT slices that ship with ctgen (``ctgen example NAME`` prints a path): phantom slices of three
patients that no training study holds, at different levels, 256² at 0.9 mm, JPEG 2000 lossless.
Made by ``python -m train.phantom.examples``; the slices sit in ``slices/``, a folder that holds nothing else
(``ctgen example --folder`` prints it: every file in it is a slice).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLES", "example_path"]

EXAMPLES = {
    "a": "phantom patient EX-1, mid-brain level (lateral ventricles)",
    "b": "phantom patient EX-2, upper level (centrum semiovale)",
    "c": "phantom patient EX-3, low level (basal ganglia, third ventricle), with contrast",
}


def example_path(name: str) -> Path:
    """The file of example ``name`` (a key of EXAMPLES)."""
    return Path(__file__).resolve().parent / "slices" / f"{name}.dcm"
