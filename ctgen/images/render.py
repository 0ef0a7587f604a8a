"""Windowed 8-bit pictures of HU images: labelled grids, PNG and animated GIF files (numpy + Pillow).

Everything is deterministic: the same input gives byte-identical files (no timestamps or other
metadata are written). Files are written atomically and never overwritten unless ``force``.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ctgen.io.atomic import atomic_file
from ctgen.errors import ArgumentError, InputError

__all__ = ["FONT_PX", "PICTURE_PX", "WINDOWS", "frames_loop", "grid_image", "hconcat", "labelled_frames",
           "parse_window", "save_gif", "save_png", "to_uint8"]

from ctgen.defaults import WINDOWS  # noqa: E402 - re-exported: the display windows by name

BACKGROUND = 0  # margins around labels
SEPARATOR = 96  # 1-px lines between tiles
TEXT = 255
PAD = 4  # pixels around label text
PICTURE_PX = 256  # the least a person needs per image: pictures enlarge smaller model grids to this
FONT_PX = 16  # label text size (Pillow's built-in scalable font; its old bitmap font where FreeType is missing)


def parse_window(spec: str) -> tuple[float, float]:
    """A preset name (``brain``, ``subdural``, ``bone``) or ``"CENTER,WIDTH"`` in HU -> (center, width).

    Raises InputError for anything else, including a width that is not positive.
    """
    text = str(spec).strip().lower()
    if text in WINDOWS:
        return WINDOWS[text]
    parts = text.split(",")
    if len(parts) == 2:
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            if _usable_window(center, width):
                return center, width
    names = ", ".join(WINDOWS)
    raise ArgumentError("window", f"bad window {spec!r}: use {names} or CENTER,WIDTH in HU with WIDTH > 0")


def to_uint8(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU (any shape, e.g. (..., H, W)) -> uint8 of the same shape through a (center, width) window.

    ``window`` may also be a spec for ``parse_window`` ("brain", "40,80").
    ``center - width/2`` and below -> 0, ``center + width/2`` and above -> 255, the centre -> 128,
    linear in between; NaN -> 0.
    """
    center, width = _check_window(window)
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(center - width / 2)) * np.float32(255.0 / width)
    scaled = np.nan_to_num(np.floor(scaled + np.float32(0.5)), nan=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def grid_image(
    hu_images: np.ndarray,
    window: tuple[float, float] | Sequence[tuple[float, float]],
    *,
    rows: int,
    cols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    scale: int = 1,
    tile_px: int | None = None,
    tile_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tiles in a rows x cols grid -> grayscale ("L") PIL image.

    ``hu_images``: HU float (rows*cols, H, W) or (rows*cols, 1, H, W), row-major; uint8 tiles are used
    as they are. ``window``: one (center, width) for all tiles or one per column (e.g. a difference
    column). Tiles are enlarged ``scale`` times (nearest neighbour), or with ``tile_px`` resampled (Lanczos)
    so that their shorter side has at least ``tile_px`` pixels, and separated by 1-px lines; row labels go
    on the left, column labels on top, the title above them, ``tile_labels`` (one per tile) in a band above
    each tile, in a FONT_PX font; column and tile labels too long for a tile are shortened with "...".
    Raises InputError when counts or label lengths do not match.
    """
    tiles = np.asarray(hu_images)
    if tiles.ndim == 4 and tiles.shape[1] == 1:
        tiles = tiles[:, 0]
    if rows < 1 or cols < 1 or tiles.ndim != 3 or len(tiles) != rows * cols:
        raise InputError(None, f"grid of {rows} x {cols} needs ({rows * cols}, H, W) images, got shape {tiles.shape}")
    for name, labels, count in (("row", row_labels, rows), ("column", col_labels, cols),
                                ("tile", tile_labels, rows * cols)):
        if labels is not None and len(labels) != count:
            raise InputError(None, f"{len(labels)} {name} labels for {count} {name}s")
    if int(scale) != scale or scale < 1:
        raise InputError(None, f"scale must be a positive integer, got {scale}")

    pixels = _window_columns(tiles, window, cols)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    if tile_px is not None:
        pixels = _enlarge(pixels, tile_px)
    _, tile_h, tile_w = pixels.shape
    font = _font()
    line_h = _text_size(font, "Ag|")[1] + 2 * PAD
    caption_h = line_h if tile_labels is not None else 0
    pitch_h = caption_h + tile_h + 1
    body = np.full((rows * pitch_h - 1, cols * (tile_w + 1) - 1), SEPARATOR, dtype=np.uint8)
    for row in range(rows):
        body[row * pitch_h : row * pitch_h + caption_h] = BACKGROUND
    for index, tile in enumerate(pixels):
        row, col = divmod(index, cols)
        y = row * pitch_h + caption_h
        body[y : y + tile_h, col * (tile_w + 1) : col * (tile_w + 1) + tile_w] = tile

    left = max((_text_size(font, str(label))[0] for label in row_labels), default=0) + 2 * PAD if row_labels else 0
    title_h = line_h if title else 0
    top = title_h + (line_h if col_labels else 0)
    width = max(left + body.shape[1], _text_size(font, title)[0] + 2 * PAD if title else 0)
    left += (width - left - body.shape[1]) // 2  # centre the grid under a wider title
    canvas = np.full((top + body.shape[0], width), BACKGROUND, dtype=np.uint8)
    canvas[top:, left : left + body.shape[1]] = body

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    if title:
        _draw_centered(draw, font, str(title), left + body.shape[1] / 2, title_h / 2, max_width=width)
    for col, label in enumerate(col_labels or ()):
        _draw_centered(draw, font, _fit(font, str(label), tile_w - 2 * PAD), left + col * (tile_w + 1) + tile_w / 2,
                       title_h + line_h / 2)
    for index, label in enumerate(tile_labels or ()):
        row, col = divmod(index, cols)
        _draw_centered(draw, font, _fit(font, str(label), tile_w - 2 * PAD), left + col * (tile_w + 1) + tile_w / 2,
                       top + row * pitch_h + caption_h / 2)
    for row, label in enumerate(row_labels or ()):
        text_w, _ = _text_size(font, str(label))
        _draw_centered(draw, font, str(label), left - PAD - text_w / 2, top + row * pitch_h + caption_h + tile_h / 2)
    return image


def labelled_frames(hu_frames: np.ndarray | Sequence[np.ndarray], window, labels: Sequence[str], *,
                    tile_px: int = PICTURE_PX) -> list[Image.Image]:
    """One "L" image per frame (HU (H, W) each, or uint8): enlarged to ``tile_px`` like ``grid_image`` with its
    label in a band on top; all the same size (labels too long are shortened), ready for ``save_gif`` or
    ``save_png``. Raises InputError when the counts differ."""
    frames = list(hu_frames)
    if len(frames) != len(labels):
        raise InputError(None, f"{len(labels)} labels for {len(frames)} frames")
    return [grid_image(np.asarray(frame)[None], window, rows=1, cols=1, tile_px=tile_px, tile_labels=[label])
            for frame, label in zip(frames, labels)]


def hconcat(images: Sequence[Image.Image | np.ndarray], *, gap: int = 1) -> Image.Image:
    """Images side by side -> "L" PIL image, ``gap``-px separator lines between them.

    Items are "L" PIL images or uint8 (H, W) arrays; shorter ones are padded at the bottom with background.
    """
    arrays = [np.asarray(_as_gray_image(item)) for item in images]
    if not arrays:
        raise InputError(None, "nothing to concatenate")
    height = max(array.shape[0] for array in arrays)
    width = sum(array.shape[1] for array in arrays) + gap * (len(arrays) - 1)
    canvas = np.full((height, width), BACKGROUND, dtype=np.uint8)
    x = 0
    for array in arrays:
        canvas[: array.shape[0], x : x + array.shape[1]] = array
        canvas[:, x + array.shape[1] : x + array.shape[1] + gap] = SEPARATOR
        x += array.shape[1] + gap
    return Image.fromarray(canvas)


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write a PIL image or uint8 (H, W) / (H, W, 3) array as PNG; returns the path.

    Atomic (temporary file + rename), parent folders created, no metadata (same pixels -> same bytes).
    Raises OutputError if the file exists and not ``force``, or it cannot be written.
    """
    image = _as_image(image)
    with atomic_file(path, force=force) as handle:
        if image.mode in ("L", "RGB"):
            handle.write(_png_bytes(image))
        else:
            clean = image.copy()
            clean.info = {}
            clean.save(handle, format="PNG", compress_level=6)
    return Path(path)


def _png_bytes(image: Image.Image) -> bytes:
    """An 8-bit L or RGB image as a PNG file: Pillow's own PNG encoder ("zip": per-row filter choice, deflate
    level 6) through ``Image.tobytes``, in the three chunks every PNG needs; the bytes of ``Image.save(format=
    "PNG", compress_level=6)`` when the data fits one IDAT chunk. ``Image.save`` first imports the BMP, GIF,
    JPEG, PPM and PNG plug-ins (with subprocess, logging, fractions): about 12 ms of ctgen sample's start-up."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    color_type = {"L": 0, "RGB": 2}[image.mode]
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, color_type, 0, 0, 0)
    compressed = image.tobytes("zip", image.mode, 0, 6, -1)  # rawmode, optimize, level, strategy
    return b"".join((b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"IDAT", compressed), chunk(b"IEND", b"")))


def save_gif(
    frames: np.ndarray | Sequence[Image.Image | np.ndarray],
    path: str | os.PathLike,
    *,
    window: tuple[float, float] | None = None,
    duration_ms: int = 120,
    force: bool = False,
) -> Path:
    """Write an animated GIF that loops forever; returns the path.

    ``frames``: HU float (N, H, W) or a list of HU (H, W) arrays, windowed with ``window`` (required then),
    or uint8 (H, W) arrays / "L" PIL images used as they are; all the same size. Pillow merges identical
    consecutive frames into one longer frame. Same atomic, no-overwrite and determinism rules as
    ``save_png``. Raises InputError for no frames, mixed sizes or HU without a window.
    """
    images = []
    for frame in frames:
        if isinstance(frame, np.ndarray) and frame.dtype != np.uint8:
            if window is None:
                raise InputError(None, "HU frames need a window")
            frame = to_uint8(frame, window)
        images.append(_as_gray_image(frame))
    if not images:
        raise InputError(None, "a GIF needs at least one frame")
    if len({image.size for image in images}) > 1:
        raise InputError(None, f"GIF frames differ in size: {sorted({image.size for image in images})}")
    if duration_ms <= 0:
        raise InputError(None, f"frame duration must be positive, got {duration_ms} ms")

    with atomic_file(path, force=force) as handle:
        images[0].save(
            handle, format="GIF", save_all=True, append_images=images[1:], duration=int(duration_ms), loop=0
        )
    return Path(path)


def frames_loop(frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Frames forward then back (without repeating the ends), for a GIF that loops smoothly."""
    frames = list(frames)
    return frames + frames[-2:0:-1]


def _check_window(window) -> tuple[float, float]:
    if isinstance(window, str):
        return parse_window(window)
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(None, f"bad window {window!r}: expected (center, width) in HU") from None
    if not _usable_window(center, width):
        raise InputError(None, f"bad window {window!r}: expected (center, width) in HU with width > 0")
    return center, width


def _usable_window(center: float, width: float) -> bool:
    # beyond a million HU a window means nothing, and float32 arithmetic on it overflows
    return math.isfinite(center) and math.isfinite(width) and abs(center) <= 1e6 and 1e-3 <= width <= 1e6


def _window_columns(tiles: np.ndarray, window, cols: int) -> np.ndarray:
    """(N, H, W) HU or uint8 -> uint8, with one window for all or one per column."""
    if tiles.dtype == np.uint8:
        return tiles
    if isinstance(window, str) or np.ndim(window) != 2:
        return to_uint8(tiles, window)
    if len(window) != cols:
        raise InputError(None, f"{len(window)} windows for {cols} columns")
    out = np.empty(tiles.shape, dtype=np.uint8)
    for col, col_window in enumerate(window):
        out[col::cols] = to_uint8(tiles[col::cols], col_window)
    return out


def _enlarge(pixels: np.ndarray, tile_px: int) -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, H', W') with min(H', W') >= ``tile_px`` (Lanczos); larger tiles unchanged."""
    _, height, width = pixels.shape
    if min(height, width) >= tile_px:
        return pixels
    factor = tile_px / min(height, width)
    size = (round(width * factor), round(height * factor))
    return np.stack([np.asarray(Image.fromarray(tile).resize(size, Image.Resampling.LANCZOS)) for tile in pixels])


def _fit(font, text: str, width: int) -> str:
    """``text``, or its end behind "..." when it is wider than ``width`` pixels (names differ at their ends)."""
    if _text_size(font, text)[0] <= width:
        return text
    for start in range(1, len(text)):
        if _text_size(font, "..." + text[start:])[0] <= width:
            return "..." + text[start:]
    return "..."


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_PX)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _draw_centered(draw: ImageDraw.ImageDraw, font, text: str, x: float, y: float, max_width=None) -> None:
    """Draw ``text`` with its bounding box centred on (x, y), kept inside [0, max_width) when given."""
    left, top, right, bottom = font.getbbox(text)
    origin_x = round(x - (right - left) / 2) - left
    if max_width is not None:
        origin_x = min(max(origin_x, -left), max_width - right)
    draw.text((origin_x, round(y - (bottom - top) / 2) - top), text, fill=TEXT, font=font)


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(None, f"expected a uint8 (H, W) or (H, W, 3) image, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def _as_gray_image(image: Image.Image | np.ndarray) -> Image.Image:
    image = _as_image(image)
    return image if image.mode == "L" else image.convert("L")
