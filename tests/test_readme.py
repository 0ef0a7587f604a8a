"""The README's commands run as written: every `ctgen ...` line of its bash blocks (but the explorer, which
serves until stopped, and lines that name a user's own archive under /data/) in a fresh folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if re.search(r"(^|\| )ctgen ", command) and "explore" not in command and "/data/" not in command \
                    and "python -m" not in command and "pip install" not in command:
                lines.append(command)
    return lines


def test_the_readme_has_commands():
    commands = readme_commands()
    assert len(commands) >= 8 and any(c.startswith("ctgen traverse") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command, tmp_path):
    ctgen = shutil.which("ctgen") or ""
    if not ctgen:
        pytest.skip("the ctgen console script is not installed")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": str(REPO_ROOT)}
    if "latents.jsonl" in command and "decode" in command:  # the README makes this file a line earlier
        subprocess.run(f"ctgen encode \"$(ctgen example --folder)\" > latents.jsonl", shell=True, cwd=tmp_path,
                       env=env, check=True, capture_output=True, executable="/bin/bash")
    result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                            executable="/bin/bash", timeout=300)
    assert result.returncode == 0, (command, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
