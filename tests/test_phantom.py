"""train.phantom: factors in range, visible in the images, realistic HU, reproducible DICOM studies."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pydicom
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("scipy")

from ctgen.io.dicom import read_series  # noqa: E402
from ctgen.errors import InputError, OutputError  # noqa: E402
from train.phantom import (  # noqa: E402
    CSV_COLUMNS,
    FACTORS,
    PIXEL_MM,
    generate_study,
    level_to_z_mm,
    patient_id,
    render_patient,
    render_slice,
    render_tissues,
    sample_patient,
    slice_levels,
)

NEUTRAL = {
    "level": 0.5, "scale_x": 1.0, "scale_y": 1.0, "rotation_deg": 0.0, "pitch_deg": 0.0, "shift_x_mm": 0.0,
    "shift_y_mm": 0.0, "atrophy_mm": 0.0, "skull_mm": 7.0, "contrast": 0.0, "contrast_hu": 0.0, "noise_hu": 0.0,
    "blur_mm": 0.0, "ventricle_mm": 0.0, "warp_mm": 0.0, "warp_seed": 0,
}
RANGES = {factor.name: (factor.low, factor.high) for factor in FACTORS}


def factors(**changes) -> dict[str, float]:
    return {**NEUTRAL, **changes}


def head_mask(hu: np.ndarray) -> np.ndarray:
    return hu > -500.0


def intracranial(tissues: dict[str, np.ndarray]) -> np.ndarray:
    return tissues["gm"] + tissues["wm"] + tissues["csf"] + tissues["vessel"]


def principal_angle_deg(mask: np.ndarray) -> float:
    """Angle of the long axis from the image's vertical, counter-clockwise on screen, in (-90, 90]."""
    rows, cols = np.nonzero(mask)
    x, y = cols - cols.mean(), -(rows - rows.mean())
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(np.stack([x, y])))
    vx, vy = eigenvectors[:, np.argmax(eigenvalues)]
    angle = np.degrees(np.arctan2(-vx, vy))
    return float((angle + 90.0) % 180.0 - 90.0)


def extent_mm(mask: np.ndarray, axis: int) -> float:
    """Extent of a mask along columns (axis=1, left-right) or rows (axis=0, front-back), in mm."""
    present = np.nonzero(mask.any(axis=1 - axis))[0]
    return float(present[-1] - present[0] + 1) * PIXEL_MM


# ---------------------------------------------------------------------------------- factors
def test_factor_table_is_documented():
    names = [factor.name for factor in FACTORS]
    assert len(names) == len(set(names))
    assert set(NEUTRAL) == {*names, "warp_seed"}
    for factor in FACTORS:
        assert factor.low < factor.high and factor.per in ("patient", "slice") and factor.distribution
        assert factor.description
    assert set(names) <= set(CSV_COLUMNS)


def test_sampled_factors_stay_in_their_ranges():
    rng = np.random.default_rng(7)
    draws = [sample_patient(rng) for _ in range(400)]
    for name, (low, high) in RANGES.items():
        if name == "level":
            continue
        values = np.array([draw[name] for draw in draws])
        assert values.min() >= low and values.max() <= high, name
        if name not in ("contrast", "contrast_hu"):
            assert values.max() - values.min() > 0.8 * (high - low), name  # the whole range is used
    contrast = np.array([draw["contrast"] for draw in draws])
    strength = np.array([draw["contrast_hu"] for draw in draws])
    assert set(np.unique(contrast)) == {0.0, 1.0} and 0.4 < contrast.mean() < 0.6
    assert np.all(strength[contrast == 0] == 0.0)
    assert strength[contrast == 1].min() >= 150.0 and strength[contrast == 1].max() <= 400.0
    for draw in draws:
        assert 0.0 <= draw["level_start"] <= 0.06 and 0.94 <= draw["level_end"] <= 1.0


def test_random_levels_are_sorted_within_the_patients_range_and_reproducible():
    patient = sample_patient(np.random.default_rng(5))
    even = slice_levels(patient, 6)
    drawn = slice_levels(patient, 6, np.random.default_rng(8))
    assert drawn.shape == (6,) and np.all(np.diff(drawn) > 0)
    assert patient["level_start"] <= drawn.min() and drawn.max() <= patient["level_end"]
    assert not np.allclose(drawn, even)
    assert np.array_equal(drawn, slice_levels(patient, 6, np.random.default_rng(8)))
    assert not np.array_equal(drawn, slice_levels(patient, 6, np.random.default_rng(9)))
    many = slice_levels(patient, 2000, np.random.default_rng(1))
    width = patient["level_end"] - patient["level_start"]
    assert np.histogram(many, bins=4)[0].min() > 400  # uniform over the whole range, not bunched
    assert many.min() < patient["level_start"] + 0.01 * width and many.max() > patient["level_end"] - 0.01 * width


def test_patient_streams_are_the_spawned_children_of_the_seed():
    children = np.random.SeedSequence(0).spawn(351)
    for index in (0, 1, 349, 350):
        direct = np.random.SeedSequence(0, spawn_key=(index,))
        assert direct.spawn_key == children[index].spawn_key == (index,)
        assert np.array_equal(direct.generate_state(8), children[index].generate_state(8))
    assert [patient_id(i) for i in (0, 349, 9998, 10000, 20000)] == [
        "PHANTOM-0001", "PHANTOM-0350", "PHANTOM-9999", "PHANTOM-10001", "PHANTOM-20001"]


# ------------------------------------------------------------------------- visible in images
@pytest.mark.parametrize("rotation", [-14.0, 0.0, 9.0])
def test_rotation_matches_principal_axis_of_the_head(rotation):
    hu = render_slice(factors(rotation_deg=rotation))
    assert principal_angle_deg(head_mask(hu)) == pytest.approx(rotation, abs=2.0)


def test_brain_area_rises_then_falls_with_level():
    def brain_area(level):
        tissues = render_tissues(factors(level=level))
        return float((tissues["gm"] + tissues["wm"]).sum())

    areas = {level: brain_area(level) for level in (0.02, 0.35, 0.5, 0.65, 0.8, 0.95)}
    assert areas[0.35] > 1.3 * areas[0.02]
    upper = [areas[level] for level in (0.5, 0.65, 0.8, 0.95)]
    assert all(a > b for a, b in zip(upper, upper[1:]))
    assert areas[0.35] > 3 * areas[0.95]


def test_head_size_scales_the_skull_contents():
    small, large = (render_tissues(factors(scale_x=sx, scale_y=sy)) for sx, sy in ((0.86, 1.0), (1.04, 0.9)))
    inside_small, inside_large = intracranial(small) > 0.5, intracranial(large) > 0.5
    # z scales with sqrt(scale_x * scale_y), so level 0.5 is the same anatomy in both
    assert extent_mm(inside_large, 1) / extent_mm(inside_small, 1) == pytest.approx(1.04 / 0.86, rel=0.02)
    assert extent_mm(inside_large, 0) / extent_mm(inside_small, 0) == pytest.approx(0.9, rel=0.02)


def test_position_moves_the_head_centroid():
    centred = render_slice(factors())
    moved = render_slice(factors(shift_x_mm=8.0, shift_y_mm=-6.0))

    def centroid(mask):
        rows, cols = np.nonzero(mask)
        return cols.mean() * PIXEL_MM, rows.mean() * PIXEL_MM

    (x0, y0), (x1, y1) = centroid(head_mask(centred)), centroid(head_mask(moved))
    assert x1 - x0 == pytest.approx(8.0, abs=0.3)
    assert y1 - y0 == pytest.approx(-6.0, abs=0.3)


def test_pitch_moves_the_upper_sections():
    # Tilting the chin down lifts the front of the plane towards the vertex and lowers its back
    # into the parietal and occipital lobes: high sections slide backwards in the image.
    rows = []
    for pitch in (-12.0, 0.0, 12.0):
        inside = intracranial(render_tissues(factors(level=0.9, pitch_deg=pitch))) > 0.5
        rows.append(np.nonzero(inside)[0].mean() * PIXEL_MM)
    assert rows[0] < rows[1] - 3.0 and rows[1] < rows[2] - 2.0


def test_skull_thickness_shows_in_the_frontal_bone():
    measured = []
    for thickness in (5.0, 8.5):
        bone = render_tissues(factors(skull_mm=thickness))["bone"]
        # rays from the front, 7 mm beside the midline (on the midline sits the frontal crest)
        measured.append(float(bone[:256, 238:243].sum(axis=0).mean()) * PIXEL_MM)
    ratios = [measured[0] / 5.0, measured[1] / 8.5]  # a little over 1: the rays are not quite normal
    assert 1.0 <= ratios[0] <= 1.2 and 1.0 <= ratios[1] <= 1.2
    assert ratios[1] == pytest.approx(ratios[0], rel=0.06)


def test_atrophy_enlarges_ventricles_and_sulci():
    fractions = []
    for atrophy in (0.0, 1.0, 2.0):
        tissues = render_tissues(factors(atrophy_mm=atrophy))
        fractions.append(tissues["csf"].sum() / intracranial(tissues).sum())
    assert fractions[0] < 0.2
    assert fractions[1] > fractions[0] + 0.02 and fractions[2] > fractions[1] + 0.04


def test_ventricle_factor_enlarges_the_measured_csf():
    from ctgen.factors import measure_slice

    found = [measure_slice(render_slice(factors(ventricle_mm=size, noise_hu=4.0), np.random.default_rng(1)),
                           (PIXEL_MM, PIXEL_MM)) for size in (0.0, 1.0, 2.5, 4.0)]
    csf = [one["csf_fraction"] for one in found]
    ventricles = [one["ventricle_mm2"] for one in found]
    print(f"csf_fraction {np.round(csf, 3)}, ventricle_mm2 {np.round(ventricles)}")
    assert all(b > a + 0.01 for a, b in zip(csf, csf[1:]))
    assert all(b > a + 100.0 for a, b in zip(ventricles, ventricles[1:]))
    tissues = [render_tissues(factors(ventricle_mm=size)) for size in (0.0, 4.0)]
    # only the ventricles grow: the cortex's CSF rim (beyond 20 mm from the midline at this level) stays
    lateral = np.abs(np.arange(512) - 256) * PIXEL_MM > 55.0
    assert np.abs(tissues[1]["csf"][:, lateral] - tissues[0]["csf"][:, lateral]).max() < 1e-6


def test_no_two_brains_are_the_same_and_a_seed_gives_the_same_brain():
    same = factors(warp_mm=2.5, warp_seed=1)
    first, again = render_slice(same), render_slice(same)
    assert np.array_equal(first, again)
    other = render_slice(factors(warp_mm=2.5, warp_seed=2))
    straight = render_slice(factors())
    brain = render_tissues(same)["gm"] > 0.5
    assert np.abs(other - first)[brain].mean() > 2.0 and np.abs(straight - first)[brain].mean() > 2.0
    # the skull keeps its shape: pose and size are the global factors' alone
    assert np.array_equal(first > 300, straight > 300)
    seeds = [sample_patient(np.random.default_rng(4))["warp_seed"] for _ in range(2)]
    assert seeds[0] == seeds[1] != sample_patient(np.random.default_rng(5))["warp_seed"]
    from train.phantom.render import _warp_mm

    grid = np.stack(np.meshgrid(*[np.linspace(-90, 90, 25)] * 3, indexing="ij"))
    displacement = _warp_mm(grid, 2.0, 7)
    assert np.sqrt((displacement**2).sum(axis=0).mean()) == pytest.approx(2.0, rel=0.25)
    assert np.array_equal(displacement, _warp_mm(grid, 2.0, 7))
    step = np.diff(displacement, axis=1) / (180 / 24)
    assert np.abs(step).max() < 0.5  # smooth: no folding


def test_contrast_fills_the_vessels():
    tissues = render_tissues(factors(level=0.3))
    core = tissues["vessel"] > 0.99
    assert core.sum() > 20
    plain = render_slice(factors(level=0.3))
    enhanced = render_slice(factors(level=0.3, contrast=1.0, contrast_hu=300.0))
    assert plain[core].max() < 60.0
    assert enhanced[core].mean() == pytest.approx(300.0, rel=0.05)
    assert np.abs(enhanced[~core & (tissues["vessel"] == 0)] - plain[~core & (tissues["vessel"] == 0)]).max() < 1e-3


def test_noise_and_blur_have_their_nominal_size():
    clean = render_slice(factors(noise_hu=6.0))
    noisy = render_slice(factors(noise_hu=6.0), np.random.default_rng(3))
    inside = head_mask(clean)
    assert (noisy - clean)[inside].std() == pytest.approx(6.0, rel=0.05)
    sharpness = [np.abs(np.diff(render_slice(factors(blur_mm=b)), axis=1)).max() for b in (0.0, 0.5, 1.2)]
    assert sharpness[0] > sharpness[1] > sharpness[2]


def test_hu_per_tissue_class_on_noise_free_renders():
    f = factors(level=0.45)
    hu, tissues = render_slice(f), render_tissues(f)
    total = sum(tissues.values())
    assert np.allclose(total, 1.0, atol=1e-4)

    def mean(name, threshold=0.95):
        region = tissues[name] > threshold
        assert region.sum() > 200, name
        return float(hu[region].mean())

    assert 35.0 <= mean("gm", 0.8) <= 45.0
    assert 20.0 <= mean("wm") <= 30.0
    assert 0.0 <= mean("csf") <= 15.0
    assert 20.0 <= mean("soft") <= 60.0
    assert mean("air") == pytest.approx(-1000.0, abs=1.0)
    bone = hu[tissues["bone"] > 0.95]
    assert 700.0 <= bone.mean() <= 1500.0 and 1000.0 <= bone.max() <= 1800.0
    assert 300.0 <= np.percentile(bone, 5) <= 600.0  # the diploe


# ------------------------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    table = generate_study(root / "a", patients=2, slices=3, seed=11, levels="even", first_patient=1, workers=1)
    generate_study(root / "b", patients=2, slices=3, seed=11, workers=2)  # default arguments
    generate_study(root / "c", patients=2, slices=3, seed=12, workers=1, contact_sheet=False)
    generate_study(root / "second", patients=1, slices=3, seed=11, first_patient=2, workers=1)
    generate_study(root / "random", patients=2, slices=3, seed=11, levels="random", workers=2, contact_sheet=False)
    generate_study(root / "random_second", patients=1, slices=3, seed=11, levels="random", first_patient=2,
                   workers=1, contact_sheet=False)
    return table.parent


def read_rows(folder, patient=None):
    with open(folder / "factors.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if patient in (None, row["patient_id"])]


def file_bytes(folder):
    return [path.read_bytes() for path in sorted(folder.rglob("*.dcm"))]


def test_same_seed_gives_the_same_bytes_whatever_the_workers(study):
    other = study.parent / "b"
    assert (study / "factors.csv").read_bytes() == (other / "factors.csv").read_bytes()
    assert file_bytes(study) == file_bytes(other)  # whole files: pixels, UIDs and dates
    assert (study / "contact_sheet.png").read_bytes() == (other / "contact_sheet.png").read_bytes()
    assert (study / "factors.csv").read_bytes() != (study.parent / "c" / "factors.csv").read_bytes()


def test_default_levels_are_the_ones_the_seed_always_gave(study):
    # values written by the code before --levels and --first-patient existed (commit 240b5e7)
    rows = read_rows(study.parent / "b", "PHANTOM-0002")
    assert [row["level"] for row in rows] == ["0.013195", "0.493274", "0.973352"]
    assert [row["z_mm"] for row in rows] == ["-47.125349", "4.615280", "56.355909"]
    assert (rows[0]["scale_x"], rows[0]["contrast_hu"], rows[0]["noise_hu"]) == ("1.005251", "195.040057", "5.584338")


@pytest.mark.parametrize(("full", "alone"), [("a", "second"), ("random", "random_second")], ids=["even", "random"])
def test_a_patient_is_the_same_whichever_patient_the_run_starts_from(study, full, alone):
    full, alone = study.parent / full, study.parent / alone
    assert sorted(path.name for path in alone.iterdir() if path.is_dir()) == ["PHANTOM-0002"]
    assert file_bytes(alone) == file_bytes(full / "PHANTOM-0002")
    assert read_rows(alone) == read_rows(full, "PHANTOM-0002")


def test_random_levels_in_a_study(study):
    even, drawn = read_rows(study), read_rows(study.parent / "random")
    assert [row["file"] for row in drawn] == [row["file"] for row in even]
    for patient in ("PHANTOM-0001", "PHANTOM-0002"):
        rows = [row for row in drawn if row["patient_id"] == patient]
        levels = [float(row["level"]) for row in rows]
        assert levels == sorted(levels) and len(set(levels)) == 3
        assert all(float(rows[0]["level_start"]) <= level <= float(rows[0]["level_end"]) for level in levels)
        assert levels != [float(row["level"]) for row in even if row["patient_id"] == patient]
        # the levels are drawn after the factors, so a patient keeps its factors
        factor_names = CSV_COLUMNS[5:]
        expected = next(row for row in even if row["patient_id"] == patient)
        assert all(row[name] == expected[name] for row in rows for name in factor_names)
        series = read_series(study.parent / "random" / patient)
        z = [one.position_mm[2] for one in series]
        assert np.allclose(z, [float(row["z_mm"]) for row in rows], atol=1e-3)
    _, levels, hu = render_patient(np.random.SeedSequence(11, spawn_key=(1,)), 3, "random")
    assert [f"{level:.6f}" for level in levels] == [row["level"] for row in drawn[3:]]
    assert np.abs(read_series(study.parent / "random" / "PHANTOM-0002")[2].hu - hu[2]).max() <= 0.5
    uids = [pydicom.dcmread(folder / "PHANTOM-0001" / "0000.dcm").SeriesInstanceUID
            for folder in (study, study.parent / "random")]
    assert uids[0] != uids[1]  # other pixels, another series


def test_uids_derive_from_the_seed(study):
    first, second = (pydicom.dcmread(folder / "PHANTOM-0001" / "0000.dcm") for folder in (study, study.parent / "b"))
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.PatientID == "PHANTOM-0001"


def test_factor_table_has_one_row_per_slice_within_ranges(study):
    with open(study / "factors.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_COLUMNS
    assert [(row["patient_id"], row["slice_index"]) for row in rows] == [
        (f"PHANTOM-000{p}", str(s)) for p in (1, 2) for s in range(3)]
    for row in rows:
        assert (study / row["file"]).is_file()
        for name, (low, high) in RANGES.items():
            assert low <= float(row[name]) <= high, name
    assert (study / "contact_sheet.png").read_bytes().startswith(b"\x89PNG")


def test_series_reads_back_with_its_geometry(study):
    slices = read_series(study / "PHANTOM-0002")
    assert len(slices) == 3
    with open(study / "factors.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["patient_id"] == "PHANTOM-0002"]
    z = [s.position_mm[2] for s in slices]
    assert z == sorted(z) and np.allclose(np.diff(z), np.diff(z)[0])
    assert np.allclose(z, [float(row["z_mm"]) for row in rows], atol=1e-3)
    patient = {name: float(value) for name, value in rows[0].items() if name in NEUTRAL}
    assert z[1] == pytest.approx(level_to_z_mm({**patient, "level": float(rows[1]["level"])}), abs=1e-3)
    seeds = np.random.SeedSequence(11).spawn(2)
    _, levels, expected = render_patient(seeds[1], 3)
    assert np.allclose(levels, [float(row["level"]) for row in rows], atol=1e-6)
    for one, hu in zip(slices, expected):
        assert one.hu.shape == (512, 512) and one.modality == "CT"
        assert one.spacing_mm == pytest.approx((0.45, 0.45))
        assert one.orientation == pytest.approx((1, 0, 0, 0, 1, 0))
        assert one.position_mm[:2] == pytest.approx((-114.975, -114.975))
        assert np.abs(one.hu - np.clip(hu, -1024, 3071)).max() <= 0.5
        assert one.patient_id == "PHANTOM-0002"
    raw = pydicom.dcmread(study / "PHANTOM-0002" / "0000.dcm")
    assert float(raw.RescaleIntercept) == -1024.0 and (raw.Rows, raw.Columns) == (512, 512)


def test_existing_study_is_not_overwritten(study):
    with pytest.raises(OutputError):
        generate_study(study, patients=1, slices=1, seed=11)


def test_bad_level_mode_or_first_patient_is_refused(tmp_path):
    with pytest.raises(InputError, match="levels"):
        generate_study(tmp_path, patients=1, slices=1, seed=1, levels="uniform")
    with pytest.raises(InputError, match="first_patient"):
        generate_study(tmp_path, patients=1, slices=1, seed=1, first_patient=0)
    assert not any(tmp_path.iterdir())


def test_worker_errors_reach_the_caller(tmp_path):
    (tmp_path / "PHANTOM-0002").mkdir()
    (tmp_path / "PHANTOM-0002" / "0000.dcm").write_bytes(b"not ours")
    with pytest.raises(OutputError, match="PHANTOM-0002"):
        generate_study(tmp_path, patients=2, slices=1, seed=1, workers=2)
    assert (tmp_path / "PHANTOM-0002" / "0000.dcm").read_bytes() == b"not ours"


@pytest.mark.slow
def test_command_line_writes_a_small_study(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train.phantom", "--patients", "2", "--slices", "2", "--out", str(tmp_path / "s"),
         "--seed", "3", "--levels", "random", "--first-patient", "5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "s" / "factors.csv")
    assert len(list((tmp_path / "s").rglob("*.dcm"))) == 4
    assert sorted(path.name for path in (tmp_path / "s").iterdir() if path.is_dir()) == ["PHANTOM-0005", "PHANTOM-0006"]
