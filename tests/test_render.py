"""ctgen.images.render: window presets and maths, labelled grids, deterministic atomic PNG and GIF files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ctgen.errors import InputError, OutputError
from ctgen.images.render import (PICTURE_PX, WINDOWS, grid_image, hconcat, labelled_frames, parse_window, save_gif, save_png,
                          to_uint8)


@pytest.fixture
def hu_tiles():
    """Six HU float32 (6, 32, 40) tiles: gradients from -100 to 200 HU, each a little different."""
    ramp = np.linspace(-100.0, 200.0, 40, dtype=np.float32)
    return np.stack([np.tile(ramp + 10 * index, (32, 1)) for index in range(6)])


def test_parse_window_presets_and_custom():
    assert parse_window("brain") == (40.0, 80.0)
    assert parse_window(" Subdural ") == WINDOWS["subdural"] == (75.0, 215.0)
    assert parse_window("bone") == (600.0, 2800.0)
    assert parse_window("40,80") == (40.0, 80.0)
    assert parse_window("-600, 1500.5") == (-600.0, 1500.5)


@pytest.mark.parametrize("spec", ["", "lung", "40", "40,", "40,80,3", "a,b", "40,0", "40,-10", "nan,80", "40,inf"])
def test_parse_window_rejects_junk(spec):
    with pytest.raises(InputError, match="bad window"):
        parse_window(spec)


def test_to_uint8_window_maths():
    center, width = 40.0, 80.0
    values = to_uint8(np.array([center, -1000.0, 0.0, 80.0, 3000.0, center - width / 2, np.nan]), (center, width))
    assert values.dtype == np.uint8
    assert values.tolist() == [128, 0, 0, 255, 255, 0, 0]
    assert to_uint8(np.array([20.0]), "brain")[0] == 64  # a quarter of the way up
    with pytest.raises(InputError):
        to_uint8(np.zeros(2), (40.0, 0.0))


def test_grid_image_layout_and_labels(hu_tiles):
    plain = grid_image(hu_tiles, (40, 80), rows=2, cols=3)
    assert plain.mode == "L"
    assert plain.size == (3 * 40 + 2, 2 * 32 + 1)  # 1-px separators
    labelled = grid_image(
        hu_tiles, (40, 80), rows=2, cols=3, row_labels=["unit 0", "unit 12"], col_labels=["-3", "0", "+3"],
        title="traverse",
    )
    assert labelled.width > plain.width and labelled.height > plain.height
    assert np.asarray(labelled).max() == 255  # text drawn
    only_rows = grid_image(hu_tiles, (40, 80), rows=2, cols=3, row_labels=["a", "b"])
    assert only_rows.height == plain.height and only_rows.width > plain.width
    scaled = grid_image(hu_tiles, (40, 80), rows=2, cols=3, scale=2)
    assert scaled.size == (3 * 80 + 2, 2 * 64 + 1)


def test_grid_image_per_column_windows_and_uint8(hu_tiles):
    windows = [(40, 80), (40, 80), (0, 10000)]
    image = np.asarray(grid_image(hu_tiles, windows, rows=2, cols=3))
    same = np.asarray(grid_image(hu_tiles, (40, 80), rows=2, cols=3))
    np.testing.assert_array_equal(image[:, :81], same[:, :81])
    assert not np.array_equal(image[:, 82:], same[:, 82:])
    from_uint8 = grid_image(to_uint8(hu_tiles, (40, 80)), None, rows=2, cols=3)
    np.testing.assert_array_equal(np.asarray(from_uint8), same)


def test_grid_image_rejects_mismatches(hu_tiles):
    with pytest.raises(InputError):
        grid_image(hu_tiles, (40, 80), rows=2, cols=2)
    with pytest.raises(InputError, match="row labels"):
        grid_image(hu_tiles, (40, 80), rows=2, cols=3, row_labels=["a"])
    with pytest.raises(InputError, match="windows"):
        grid_image(hu_tiles, [(40, 80), (40, 80)], rows=2, cols=3)


def test_png_is_deterministic_and_atomic(tmp_path, hu_tiles):
    def render():
        return grid_image(hu_tiles, (40, 80), rows=2, cols=3, row_labels=["a", "b"], col_labels=["x", "y", "z"])

    first = save_png(render(), tmp_path / "deep" / "er" / "a.png")
    second = save_png(render(), tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"tIME" not in first.read_bytes() and b"tEXt" not in first.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["b.png", "deep"]  # no temporary files left
    with Image.open(first) as reread:
        np.testing.assert_array_equal(np.asarray(reread), np.asarray(render()))


@pytest.mark.parametrize("shape", [(7, 5), (64, 80), (300, 400), (33, 21, 3)])
def test_png_bytes_are_pillows_own(tmp_path, shape):
    import io

    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 16  # smooth and noisy rows: the encoder picks different filters
    written = save_png(pixels, tmp_path / "a.png")
    with Image.open(written) as image:
        assert image.mode == ("L" if len(shape) == 2 else "RGB") and not image.info
        assert np.array_equal(np.asarray(image), pixels)
    reference = io.BytesIO()
    Image.fromarray(pixels).save(reference, format="PNG", compress_level=6)
    if len(reference.getvalue()) < 60_000:  # Pillow's save splits larger data into several IDAT chunks
        assert written.read_bytes() == reference.getvalue()


def test_save_png_overwrite_protection(tmp_path):
    path = save_png(np.zeros((4, 4), np.uint8), tmp_path / "x.png")
    with pytest.raises(OutputError, match="already exists"):
        save_png(np.full((4, 4), 255, np.uint8), path)
    assert np.asarray(Image.open(path)).max() == 0
    save_png(np.full((4, 4), 255, np.uint8), path, force=True)
    assert np.asarray(Image.open(path)).min() == 255
    with pytest.raises(OutputError, match="folder"):
        save_png(np.zeros((4, 4), np.uint8), tmp_path, force=True)
    with pytest.raises(InputError):
        save_png(np.zeros((4, 4), np.float32), tmp_path / "y.png")


def test_gif_frames_loop_and_determinism(tmp_path, hu_tiles):
    first = save_gif(hu_tiles, tmp_path / "a.gif", window=(40, 80), duration_ms=100)
    second = save_gif(list(hu_tiles), tmp_path / "b.gif", window=(40, 80), duration_ms=100)
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as gif:
        assert gif.n_frames == 6
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 100
        gif.seek(3)
        np.testing.assert_array_equal(np.asarray(gif.convert("L")), to_uint8(hu_tiles[3], (40, 80)))
    frames = [Image.fromarray(to_uint8(tile, "brain")) for tile in hu_tiles[:3]]
    assert Image.open(save_gif(frames, tmp_path / "c.gif")).n_frames == 3


def test_gif_errors(tmp_path, hu_tiles):
    with pytest.raises(InputError, match="window"):
        save_gif(hu_tiles, tmp_path / "a.gif")
    with pytest.raises(InputError, match="at least one"):
        save_gif([], tmp_path / "a.gif", window=(40, 80))
    with pytest.raises(InputError, match="size"):
        save_gif([hu_tiles[0], hu_tiles[0][:10]], tmp_path / "a.gif", window=(40, 80))
    save_gif(hu_tiles, tmp_path / "a.gif", window=(40, 80))
    with pytest.raises(OutputError):
        save_gif(hu_tiles, tmp_path / "a.gif", window=(40, 80))


def test_hconcat():
    left = np.full((10, 5), 200, np.uint8)
    right = Image.fromarray(np.full((6, 7), 100, np.uint8))
    joined = np.asarray(hconcat([left, right]))
    assert joined.shape == (10, 5 + 1 + 7)
    assert joined[0, 5] == 96 and joined[0, 0] == 200 and joined[0, 6] == 100 and joined[9, 6] == 0
    with pytest.raises(InputError):
        hconcat([])


# ------------------------------------------------------------------ issue 24 item 8: pictures a person can read
def test_labels_are_at_least_14_px_tall():
    from ctgen.images.render import _font, _text_size

    assert _text_size(_font(), "Ag|")[1] >= 14


def test_tile_px_enlarges_small_tiles_smoothly(hu_tiles):
    picture = grid_image(hu_tiles, (40, 80), rows=2, cols=3, tile_px=PICTURE_PX)
    tile_w = round(40 * PICTURE_PX / 32)  # the shorter side (32) becomes 256
    assert picture.size == (3 * tile_w + 2, 2 * PICTURE_PX + 1)
    row = np.asarray(picture)[10, :tile_w].astype(int)
    assert len(np.unique(row)) > 40  # resampled, not 8-px blocks of 40 grey levels
    large = np.zeros((2, 300, 300), np.float32)
    assert grid_image(large, (40, 80), rows=1, cols=2, tile_px=PICTURE_PX).size == (601, 300)  # never shrunk


def test_tile_labels_are_drawn_in_a_band_and_never_run_together(hu_tiles):
    names = ["a.dcm", "toc.dcm", "a-very-long-source-name-that-cannot-fit-over-one-tile_0042.dcm", "x", "y", "z"]
    picture = np.asarray(grid_image(hu_tiles, (40, 80), rows=2, cols=3, tile_px=PICTURE_PX, tile_labels=names))
    blank = np.asarray(grid_image(hu_tiles, (40, 80), rows=2, cols=3, tile_px=PICTURE_PX, tile_labels=[""] * 6))
    assert picture.shape == blank.shape and picture.shape[0] > 2 * PICTURE_PX + 2 * 14
    band = picture.shape[0] // 2 - PICTURE_PX  # caption band height
    tile_w = (picture.shape[1] - 2) // 3
    for index in range(6):
        row, col = divmod(index, 3)
        y, x = row * (band + PICTURE_PX + 1), col * (tile_w + 1)
        caption = picture[y : y + band, x : x + tile_w]
        assert not np.array_equal(caption, blank[y : y + band, x : x + tile_w]), names[index]
        assert caption[:, :2].max() == 0 and caption[:, -2:].max() == 0  # kept inside its own tile
    with pytest.raises(InputError, match="tile labels"):
        grid_image(hu_tiles, (40, 80), rows=2, cols=3, tile_labels=["a"])


def test_labelled_frames_share_one_size_for_a_gif(hu_tiles, tmp_path):
    frames = labelled_frames(hu_tiles, (40, 80), ["u3 -2.0", "u3 recon", "u3 +2.0 with a long tail", "a", "b", "c"])
    assert len({frame.size for frame in frames}) == 1 and frames[0].width >= PICTURE_PX
    path = save_gif(frames, tmp_path / "u3.gif")
    with Image.open(path) as gif:
        assert gif.size == frames[0].size and gif.n_frames == 6
