"""ctgen decode refuses latents that their file says another model wrote (--any-model: a warning instead)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke, one_error_line

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def mine(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model as another export would give it: named "mine", with an encoder of other bytes."""
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("mine") / "mine"))
    graph = onnx.load(str(folder / "encoder.onnx"))
    graph.doc_string = "another export"
    onnx.save(graph, str(folder / "encoder.onnx"))
    card = json.loads((folder / "model.json").read_text())
    data = (folder / "encoder.onnx").read_bytes()
    card["files"]["encoder.onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    card["name"] = "mine"
    (folder / "model.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".jsonl"])
def test_decode_refuses_latents_of_another_model(mine, model, heads, workdir, suffix):
    assert invoke("encode", heads[0], "-m", mine, "--out", f"latents{suffix}").exit_code == 0
    line = one_error_line(invoke("decode", f"latents{suffix}", "-m", model),
                          f"latents{suffix}: written by model 'mine' (sha256 ", "), not by 'tiny' (sha256 ",
                          "; pass --model mine")
    assert not (workdir / "decoded.png").exists(), line
    result = invoke("decode", f"latents{suffix}", "-m", model, "--any-model")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith(f"ctgen: warning: latents{suffix}: written by model 'mine'")
    assert (workdir / "decoded.png").is_file()
    result = invoke("decode", f"latents{suffix}", "-m", mine, "--out", "mine.png")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


def test_a_pipe_carries_the_model_too(mine, model, heads, workdir):
    lines = invoke("encode", heads[0], heads[1], "-m", mine).stdout
    assert {json.loads(line)["model"] for line in lines.splitlines()} == {"mine"}
    one_error_line(invoke("decode", "-", "-m", model, input=lines), "<stdin>: written by model 'mine'")
    assert invoke("decode", "-", "-m", mine, input=lines).exit_code == 0


def test_latents_that_name_no_model_are_decoded_without_a_word(model, workdir):
    (workdir / "hand.csv").write_text(",".join(["0"] * 8) + "\n")
    np.savez(workdir / "old.npz", files=np.array(["a"]), mu=np.zeros((1, 8), np.float32))
    for name in ("hand.csv", "old.npz"):
        result = invoke("decode", name, "-m", model, "--force")
        assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


def test_npy_latents_say_they_cannot_name_the_model(model, heads, workdir):
    result = invoke("encode", heads[0], "-m", model, "--out", "latents.npy")
    assert result.exit_code == 0
    assert "ctgen: note: latents.npy holds the numbers only" in result.stderr
