"""Physical units at run time (issue 25, item 4): traverse, edit, encode --factors, info and units with a model
whose card binds units to measured factors (conftest's ``bound_model``). The Python API's side
(``Generator.read_factors``, ``set_factors``, ``edit``, ``traverse_rows``) is in test_api.py."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from conftest import files_under, invoke, one_error_line, one_usage_line, run_ctgen

from ctgen.api import load_generator
from ctgen.errors import ArgumentError
from ctgen.latent import FactorSetting, parse_ranges, parse_setting, physical_text


def outputs(workdir) -> list[str]:
    """What a command wrote into the working folder (the model copy lives there too)."""
    return [name for name in files_under(workdir) if not name.startswith("tiny/")]


@pytest.fixture
def generator(bound_model):
    return load_generator(bound_model)


# --------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, expected", [
    ("rotation_deg=+10", FactorSetting("rotation_deg", 10.0, True)),
    ("rotation_deg=-10", FactorSetting("rotation_deg", -10.0, True)),
    ("ventricle_mm2=40", FactorSetting("ventricle_mm2", 40.0, False)),
    ("rotation_deg==-10", FactorSetting("rotation_deg", -10.0, False)),
    (" level = 0.5 ", FactorSetting("level", 0.5, False)),
])
def test_settings_are_absolute_or_relative(text, expected):
    assert parse_setting(text) == expected


@pytest.mark.parametrize("text", ["rotation_deg", "=4", "rotation_deg=x", "rotation_deg=nan", "1x=2", "a=+inf"])
def test_bad_settings_name_the_option(text):
    with pytest.raises(ArgumentError, match="FACTOR=VALUE") as caught:
        parse_setting(text)
    assert caught.value.argument == "set"


def test_ranges_in_deviations_and_in_physical_units():
    assert parse_ranges(None).sd == 3.0 and parse_ranges(None).factors == {}
    ranges = parse_ranges(["2", "rotation_deg=-20:20,head_width_max_mm=10"])
    assert ranges.sd == 2.0
    assert (ranges.factors["rotation_deg"].low, ranges.factors["rotation_deg"].high) == (-20.0, 20.0)
    assert not ranges.factors["rotation_deg"].relative
    assert ranges.factors["head_width_max_mm"].relative and ranges.factors["head_width_max_mm"].high == 10.0
    for bad in ("0", "101", "x", "rotation_deg=20:-20", "rotation_deg=0", "rotation_deg=a:b", "9x=1:2"):
        with pytest.raises(ArgumentError):
            parse_ranges([bad])


def test_physical_text():
    assert physical_text(15.0, "deg") == "15°" and physical_text(-3.25, "deg") == "-3.2°"
    assert physical_text(0.0, "deg", signed=True) == "+0°" and physical_text(-0.0, "deg", signed=True) == "+0°"
    assert physical_text(142.6, "mm") == "143 mm" and physical_text(40.0, "mm²") == "40 mm2"
    assert physical_text(0.123, "") == "0.12" and physical_text(float("nan"), "mm") == "n/a"


# --------------------------------------------------------------------------------------------- traverse
def test_traverse_labels_bound_rows_in_their_units(bound_model, workdir, heads):
    result = invoke("traverse", heads[0], "-m", bound_model, "--units", "rotation_deg,head_width_max_mm,3",
                    "--range", "rotation_deg=-15:15", "--range", "head_width_max_mm=10", "--steps", "3", "--json",
                    "--gif-dir", "gifs", "--per-file", "cells")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [row.get("factor") for row in rows] == ["rotation_deg", "head_width_max_mm", None]
    assert rows[0]["labels"] == ["-15°", "0°", "15°"] and rows[0]["values"] == [-15.0, 0.0, 15.0]
    reading = rows[1]["reading"]
    assert rows[1]["labels"] == [f"-10 mm ({physical_text(reading - 10, 'mm')})",
                                 f"+0 mm ({physical_text(reading, 'mm')})",
                                 f"+10 mm ({physical_text(reading + 10, 'mm')})"]
    assert rows[2]["labels"] == ["-3.0", "recon", "+3.0"]  # a free unit: standard deviations, as before
    assert files_under(workdir / "gifs") == ["u0.gif", "u1.gif", "u3.gif"]
    cells = files_under(workdir / "cells")
    assert "u0_rotation_deg_=-15.png" in cells and "u1_head_width_max_mm_+10.png" in cells and "u3_-3.00.png" in cells
    assert (workdir / "traverse.png").stat().st_size > 0


def test_traverse_range_errors_are_usage_errors(bound_model, model, workdir):
    one_usage_line(invoke("traverse", "-m", bound_model, "-u", "3", "--range", "rotation_deg=10"), "--range",
                   "not a bound factor among the rows")
    one_usage_line(invoke("traverse", "-m", bound_model, "--range", "rotation_deg=5:1"), "--range", "LO must be")
    one_usage_line(invoke("traverse", "-m", model, "-u", "rotation_deg"), "--units", "no unit of model")
    assert outputs(workdir) == []


# --------------------------------------------------------------------------------------------- edit
@pytest.mark.parametrize("suffix", [".png", ".dcm", ".npy"])
def test_edit_writes_each_format_and_reports_every_bound_factor(bound_model, workdir, heads, suffix):
    result = invoke("edit", heads[0], "-m", bound_model, "--set", "rotation_deg=+10", "--set", "ventricle_mm2=40",
                    "--out", f"edited{suffix}", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    factors = {entry["factor"]: entry for entry in summary["factors"]}
    assert list(factors) == ["rotation_deg", "head_width_max_mm", "ventricle_mm2"]
    rotation, width, ventricles = factors.values()
    assert rotation["set"] and rotation["requested"] == pytest.approx(rotation["reading_before"] + 10)
    assert rotation["reading_after"] == pytest.approx(rotation["requested"], abs=1e-4)
    assert ventricles["requested"] == 40 and ventricles["reading_after"] == pytest.approx(40, abs=1e-3)
    assert not width["set"] and width["reading_after"] == pytest.approx(width["reading_before"])
    assert width["measured_input"] is None  # a series factor: one slice cannot measure it
    assert rotation["measured_input"] == pytest.approx(0.0, abs=1.0)
    assert summary["settings"] == ["rotation_deg=+10", "ventricle_mm2=40"]
    assert outputs(workdir) == [f"edited{suffix}"]
    path = workdir / f"edited{suffix}"
    if suffix == ".npy":
        hu = np.load(path)
        assert hu.shape == (64, 64) and hu.dtype == np.float32
    elif suffix == ".dcm":
        ds = pydicom.dcmread(path)
        assert "edit" in ds.SeriesDescription and "rotation_deg=+10" in ds.ImageComments
        assert "model tiny" in ds.DerivationDescription
    else:
        from PIL import Image

        assert Image.open(path).size[1] >= 256


def test_edit_errors(bound_model, model, workdir, heads):
    one_usage_line(invoke("edit", heads[0], "-m", bound_model, "--set", "level=1"), "--set",
                   "'level' is not a bound factor", "bound: rotation_deg, head_width_max_mm, ventricle_mm2")
    one_usage_line(invoke("edit", heads[0], "-m", bound_model, "--set", "head_width=+10"), "--set",
                   "'head_width' is not a bound factor of model", "(did you mean head_width_max_mm?)")
    one_usage_line(invoke("edit", heads[0], "-m", bound_model, "--set", "rotation_deg"), "--set", "FACTOR=VALUE")
    one_usage_line(invoke("edit", heads[0], "-m", bound_model), "--set")
    one_usage_line(invoke("edit", heads[0], "-m", bound_model, "--set", "rotation_deg=1", "-o", "e.jpg"), "--out")
    one_error_line(invoke("edit", heads[0], "-m", model, "--set", "rotation_deg=1"), "has no bound units")
    assert outputs(workdir) == []
    assert invoke("edit", heads[0], "-m", bound_model, "--set", "rotation_deg=1", "-q").exit_code == 0
    one_error_line(invoke("edit", heads[0], "-m", bound_model, "--set", "rotation_deg=1"), "already exists")


def test_edit_on_the_fast_path_runs_without_torch(bound_model, heads, tmp_path):
    result = run_ctgen(["edit", heads[0], "-m", bound_model, "--set", "rotation_deg==-10", "-o", "e.npy", "--json"],
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    factors = json.loads(result.stdout)["factors"]
    assert factors[0]["requested"] == -10 and factors[0]["reading_after"] == pytest.approx(-10, abs=1e-3)


# --------------------------------------------------------------------------------------------- encode --factors
def test_encode_factors_in_every_format_and_decode_ignores_them(bound_model, workdir, heads, generator):
    from ctgen.io.latent_io import load_latents

    mu = generator.encode(heads[:2])
    expected = generator.read_factors(mu)
    lines = invoke("encode", heads[0], heads[1], "-m", bound_model, "--factors")
    assert lines.exit_code == 0, lines.stderr
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [list(record)[:5] for record in records] == [["file", "mu", "rotation_deg", "head_width_max_mm",
                                                         "ventricle_mm2"]] * 2
    np.testing.assert_allclose([record["rotation_deg"] for record in records], expected["rotation_deg"], rtol=1e-5)
    for name in ("z.csv", "z.npz", "z.jsonl"):
        result = invoke("encode", heads[0], heads[1], "-m", bound_model, "--factors", "-o", name, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["outputs"][0]["factors"] == ["rotation_deg", "head_width_max_mm",
                                                                      "ventricle_mm2"]
        read = load_latents(str(workdir / name))
        np.testing.assert_allclose(read.vectors, mu, rtol=1e-6, atol=1e-7)  # the readings are not vector columns
        assert invoke("decode", name, "-m", bound_model, "-o", f"{name}.npy", "-q").exit_code == 0
    header = (workdir / "z.csv").read_text().splitlines()[0].split(",")
    assert header[9:] == ["rotation_deg", "head_width_max_mm", "ventricle_mm2", "model", "encoder_sha256"]
    with np.load(workdir / "z.npz") as archive:
        np.testing.assert_allclose(archive["ventricle_mm2"], expected["ventricle_mm2"], rtol=1e-5)


def test_encode_factors_errors(bound_model, model, workdir, heads):
    one_usage_line(invoke("encode", heads[0], "-m", bound_model, "--factors", "-o", "z.npy"), "--factors", ".npy")
    one_error_line(invoke("encode", heads[0], "-m", model, "--factors"), "has no bound units")
    assert outputs(workdir) == []


def test_factor_columns_keep_clear_of_the_files_own_fields():
    from ctgen.io.latent_io import factor_columns

    assert list(factor_columns({"rotation_deg": 1, "file": 2, "mu_3": 3})) == ["rotation_deg", "factor_file",
                                                                               "factor_mu_3"]


# --------------------------------------------------------------------------------------------- info and units
def test_info_and_units_name_the_bound_units(bound_model, model):
    summary = json.loads(invoke("info", "-m", bound_model, "--json").stdout)
    assert summary["model"]["bound_units"][0] == {"unit": 0, "factor": "rotation_deg", "unit_of_measure": "deg",
                                                  "mean": 1.5, "std": 8.0}
    text = invoke("info", "-m", bound_model).stdout
    assert "u0 rotation_deg in deg (mean 1.5, sd 8)" in text and "u2 ventricle_mm2 in mm²" in text
    assert json.loads(invoke("info", "-m", model, "--json").stdout)["model"]["bound_units"] == []
    rows = json.loads(invoke("units", "-m", bound_model, "--json").stdout)["units"]
    by_unit = {row["unit"]: row for row in rows}
    assert by_unit[1]["factor"] == "head_width_max_mm" and by_unit[1]["bound"]["unit_of_measure"] == "mm"
    assert "bound" not in by_unit[3]
    assert "head_width_max_mm (bound, mm)" in invoke("units", "-m", bound_model).stdout


def test_a_factor_set_twice_is_a_usage_error(bound_model, workdir, heads):
    one_usage_line(invoke("edit", heads[0], "-m", bound_model, "--set", "rotation_deg=+10", "--set",
                          "rotation_deg=+10"), "--set", "rotation_deg set more than once")
    with pytest.raises(ArgumentError, match="set more than once"):
        load_generator(bound_model).edit(heads[0], {"rotation_deg": 1}, rotation_deg=2)
    assert outputs(workdir) == []


def test_values_far_beyond_the_training_range_are_refused(bound_model, workdir, heads):
    one_usage_line(invoke("traverse", "-m", bound_model, "-u", "rotation_deg", "--range", "rotation_deg=-1e308:1e308"),
                   "--range", "more than 100 standard deviations")
    one_usage_line(invoke("edit", heads[0], "-m", bound_model, "--set", "ventricle_mm2=1e9"), "--set",
                   "ventricle_mm2 1e+09 mm² lies more than 100 standard deviations (100) from its training mean (300)")
    assert outputs(workdir) == []
