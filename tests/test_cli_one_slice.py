"""The commands that take one slice (traverse, interpolate, explore's start) on a file that holds several:
the middle slice unless --slice K or FILE#K names one, with a note on stderr and in --json (conftest's
``enhanced`` and ``volume``; the Python API's side is in test_api.py)."""

from __future__ import annotations

import json

from conftest import invoke, one_usage_line


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ctgen: note: ")]


def test_traverse_a_multi_frame_file_uses_its_middle_frame(enhanced, model, workdir):
    result = invoke("traverse", enhanced, "--units", "0-4", "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    assert _notes(result.stderr) == [f"ctgen: note: {enhanced} holds 2 slices; using #1 (the middle one); "
                                     "choose with --slice K"]
    summary = json.loads(result.stdout)
    assert summary["center"] == f"{enhanced.name}#1"
    assert summary["notes"] == [{"file": f"{enhanced}#1", "note": f"{enhanced} holds 2 slices; using #1 "
                                                                      "(the middle one)"}]
    assert (workdir / "traverse.png").is_file()


def test_traverse_a_volume_uses_its_middle_slice_quietly_with_quiet(volume, model, workdir):
    result = invoke("traverse", volume, "--units", "0-1", "-m", model, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == ""
    assert json.loads(result.stdout)["notes"][0]["file"] == f"{volume}#1"


def test_interpolate_a_multi_frame_file_and_a_volume(enhanced, volume, model, workdir):
    result = invoke("interpolate", enhanced, volume, "--steps", "3", "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["inputs"] == [f"{enhanced}#1", f"{volume}#1"]
    assert [note.split(" holds ")[0] for note in _notes(result.stderr)] == [f"ctgen: note: {enhanced}",
                                                                              f"ctgen: note: {volume}"]


def test_a_named_slice_draws_no_note(enhanced, volume, model, workdir):
    result = invoke("interpolate", f"{enhanced}#0", f"{volume}#2", "--steps", "3", "-m", model, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["inputs"] == [f"{enhanced}#0", f"{volume}#2"]
    assert "notes" not in json.loads(result.stdout) and not _notes(result.stderr)
    result = invoke("traverse", volume, "--slice", "2", "--units", "0", "-m", model, "--json", "--force")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["center"] == f"{volume.name}#2" and not _notes(result.stderr)
    one_usage_line(invoke("traverse", f"{volume}#0", "--slice", "1", "-m", model), "--slice", "names slice 0")


def test_explore_starts_from_the_middle_slice(enhanced, tiny_model_dir):
    from test_explore import run_command

    text = run_command(["--model", str(tiny_model_dir), "--port", "0", "--no-browser", "--device", "cpu",
                        str(enhanced)])
    assert f"ctgen: note: {enhanced} holds 2 slices; using #1 (the middle one); choose with --slice K" in text
    assert "serving on http://127.0.0.1:" in text


def test_edit_a_volume_uses_its_middle_slice_or_the_one_named(volume, tiny_model_copy, workdir):
    card = json.loads((tiny_model_copy / "model.json").read_text())
    card["binding"] = {"units": [{"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg", "mean": 0.0,
                                  "std": 8.0}]}
    (tiny_model_copy / "model.json").write_text(json.dumps(card))
    result = invoke("edit", volume, "--set", "rotation_deg=+5", "-m", tiny_model_copy, "--json", "-o", "e.npy")
    assert result.exit_code == 0, result.stderr
    assert _notes(result.stderr) == [f"ctgen: note: {volume} holds 3 slices; using #1 (the middle one); "
                                     "choose with --slice K"]
    assert json.loads(result.stdout)["file"] == f"{volume}#1"
    named = invoke("edit", volume, "--slice", "2", "--set", "rotation_deg=+5", "-m", tiny_model_copy, "--json",
                   "-o", "f.npy")
    assert named.exit_code == 0 and _notes(named.stderr) == [] and json.loads(named.stdout)["file"] == f"{volume}#2"
