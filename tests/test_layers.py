"""The layers import one way only: studies -> export -> train -> ctgen, and ctgen never imports PyTorch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# package -> the top-level names it must never import (at module level or inside a function)
FORBIDDEN = {
    "ctgen": {"train", "export", "studies", "torch"},
    "train": {"export", "studies"},
    "export": {"studies"},
    "studies": set(),
}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names imported anywhere in a source file (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    upward = {str(path.relative_to(REPO_ROOT)): sorted(imported_roots(path) & FORBIDDEN[package]) for path in files}
    assert not {name: roots for name, roots in upward.items() if roots}, upward


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import numpy\n\ndef f():\n    from export.card import x\n    import torch.nn\n")
    assert imported_roots(source) == {"numpy", "export", "torch"}
