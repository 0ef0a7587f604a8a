"""Every picture ctgen writes shows each image at PICTURE_PX (256) or more with a legible label (issue 24 item 8),
while .npy and DICOM outputs stay on the model grid. The tiny model's grid is 64 px."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageSequence

from conftest import CT_SMALL, invoke
from ctgen.images.render import PICTURE_PX


def _gray(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _band(picture: np.ndarray) -> int:
    """Rows of the label band above a per-file picture: everything above the PICTURE_PX image."""
    return picture.shape[0] - PICTURE_PX


def test_per_file_pngs_are_enlarged_and_labelled_npy_stays_on_the_grid(model, workdir):
    assert invoke("sample", "--n", 2, "-m", model, "--per-file", "png", "-q").exit_code == 0
    first, second = _gray(workdir / "png" / "sample_00000.png"), _gray(workdir / "png" / "sample_00001.png")
    assert first.shape[1] == PICTURE_PX and _band(first) >= 14 + 4
    assert first[: _band(first)].max() == 255  # text drawn in the band
    assert not np.array_equal(first[: _band(first)], second[: _band(second)])  # each its own label
    assert invoke("sample", "--n", 2, "-m", model, "--per-file", "npy", "--format", "npy", "-q").exit_code == 0
    assert np.load(workdir / "npy" / "sample_00000.npy").shape == (64, 64)


def test_sample_grid_tiles_are_256_px_and_each_labelled(model, workdir):
    assert invoke("sample", "--n", 4, "-m", model, "-o", "grid.png", "-q").exit_code == 0
    picture = _gray(workdir / "grid.png")
    assert picture.shape[1] >= 2 * PICTURE_PX and picture.shape[0] >= 2 * PICTURE_PX + 2 * 14


def test_traverse_gif_frames_are_enlarged_and_labelled(model, workdir):
    result = invoke("traverse", CT_SMALL, "--units", "0", "--steps", 3, "-m", model, "--gif-dir", "gifs", "-q")
    assert result.exit_code == 0, result.stderr
    with Image.open(workdir / "gifs" / "u0.gif") as gif:
        frames = [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(gif)]
    assert frames[0].shape[1] == PICTURE_PX and _band(frames[0]) >= 14
    bands = [frame[: _band(frame)] for frame in frames]
    assert all(band.max() > 200 for band in bands)  # every frame carries its label
    assert not np.array_equal(bands[0], bands[1])  # "u0 -3.0" then "u0 recon"
    traverse = _gray(workdir / "traverse.png")
    assert traverse.shape[0] >= PICTURE_PX and traverse.shape[1] >= 3 * PICTURE_PX


def test_interpolation_strip_and_reconstruction_panels_are_256_px(model, workdir, heads):
    assert invoke("interpolate", heads[0], heads[1], "--steps", 3, "-m", model, "--gif", "-q").exit_code == 0
    strip = _gray(workdir / "interpolation.png")
    assert strip.shape[0] >= PICTURE_PX + 2 * 14 and strip.shape[1] >= 3 * PICTURE_PX
    with Image.open(workdir / "interpolation.gif") as gif:
        assert gif.size[0] == PICTURE_PX and gif.size[1] > PICTURE_PX
    assert invoke("reconstruct", heads[0], "-m", model, "-o", "panel.png", "-q").exit_code == 0
    panel = _gray(workdir / "panel.png")
    assert panel.shape[1] >= 3 * PICTURE_PX and panel.shape[0] >= PICTURE_PX


def test_decoded_grid_rows_are_labelled_by_the_latent_rows_sources(model, workdir, heads):
    assert invoke("encode", *heads[:2], "-m", model, "-o", "z.npz").exit_code == 0
    with np.load(workdir / "z.npz") as archive:
        np.save(workdir / "z.npy", archive["mu"])  # the same vectors, without their source names
    for name in ("z.npz", "z.npy"):
        result = invoke("decode", name, "-m", model, "-o", f"{name}.png", "-q")
        assert result.exit_code == 0, result.stderr
    named, numbered = _gray(workdir / "z.npz.png"), _gray(workdir / "z.npy.png")
    assert named.shape == numbered.shape and named.shape[1] >= 2 * PICTURE_PX
    tiles = named.shape[0] - PICTURE_PX
    caption = slice(tiles - _line_height(), tiles)  # the band right above the tiles (the title is above it)
    assert np.array_equal(named[tiles:], numbered[tiles:])  # the same decoded images
    assert not np.array_equal(named[caption], numbered[caption])  # captions 0000.dcm, 0001.dcm instead of #0, #1
    assert named[caption].max() == 255


def _line_height() -> int:
    from ctgen.images.render import PAD, _font, _text_size

    return _text_size(_font(), "Ag|")[1] + 2 * PAD
