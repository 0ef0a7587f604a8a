"""Charts for reports, drawn with matplotlib (imported on first use, Agg backend, no display needed).

Every function returns a PIL image, so reports save it like any other picture (``ctgen.images.render.save_png``:
atomic, no metadata): the same figures give the same bytes with the same matplotlib.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["COLOURS", "bar_chart", "control_chart", "line_chart", "scatter_chart", "side_by_side", "spectra_chart"]

COLOURS = ("#285aaa", "#c83c28", "#289646", "#9650aa", "#e69614", "#555555")  # one per series, in order
DPI = 100


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "ctgen", "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt, *plt.subplots(figsize=size, dpi=DPI)


def _image(plt, figure) -> Any:
    from PIL import Image

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    buffer.seek(0)
    image = Image.open(buffer)
    image.load()
    return image.convert("RGB")


def bar_chart(values: Sequence[float], *, title: str, x_label: str, y_label: str,
              threshold: float | None = None, size: tuple[float, float] = (8.0, 3.0)) -> Any:
    """One bar per value (x = index); bars above ``threshold`` coloured, the others grey, the threshold a line."""
    plt, figure, axes = _figure(size)
    colours = [COLOURS[0] if threshold is None or value > threshold else "#aaaaaa" for value in values]
    axes.bar(range(len(values)), values, color=colours, width=0.8)
    if threshold is not None:
        axes.axhline(threshold, color=COLOURS[1], linewidth=1, label=f"{threshold:g}")
        axes.legend(loc="upper right", frameon=False)
    axes.set(title=title, xlabel=x_label, ylabel=y_label, xlim=(-0.8, len(values) - 0.2))
    return _image(plt, figure)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str,
               y_label: str = "", log_x: bool = True, y_range: tuple[float, float] | None = None,
               size: tuple[float, float] = (5.2, 3.2)) -> Any:
    """Series of (x, y) points as lines with markers and a legend; x on a log scale unless ``log_x`` is False."""
    plt, figure, axes = _figure(size)
    xs = sorted({x for points in series.values() for x, _ in points})
    for index, (name, points) in enumerate(series.items()):
        shown = sorted((x, y) for x, y in points if y is not None)
        axes.plot([x for x, _ in shown], [y for _, y in shown], marker="o", color=COLOURS[index % len(COLOURS)],
                  label=name)
    if log_x and xs and min(xs) > 0:
        axes.set_xscale("log")
    axes.set_xticks(xs, [f"{x:g}" for x in xs])
    axes.minorticks_off()
    if y_range is not None:
        axes.set_ylim(*y_range)
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    if len(series) > 1:
        axes.legend(frameon=False)
    return _image(plt, figure)


def scatter_chart(groups: Mapping[str, Sequence[tuple[float, float, str]]], *, title: str, x_label: str,
                  y_label: str, size: tuple[float, float] = (5.2, 3.6)) -> Any:
    """Points (x, y, label) in coloured groups, each point labelled."""
    plt, figure, axes = _figure(size)
    for index, (name, points) in enumerate(groups.items()):
        colour = COLOURS[index % len(COLOURS)]
        axes.scatter([x for x, _, _ in points], [y for _, y, _ in points], color=colour, label=name)
        for x, y, label in points:
            axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colour)
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.legend(frameon=False, fontsize=8)
    return _image(plt, figure)


def control_chart(requested: Sequence[float], measured: Sequence[float], *, title: str, x_label: str,
                  y_label: str, size: tuple[float, float] = (4.2, 3.8)) -> Any:
    """Measured against requested values (one point each, NaN left out), the median at each request joined by a
    line, the ideal (measured = requested) dashed."""
    import numpy as np

    plt, figure, axes = _figure(size)
    requested, measured = np.asarray(requested, np.float64), np.asarray(measured, np.float64)
    finite = np.isfinite(requested) & np.isfinite(measured)
    axes.scatter(requested[finite], measured[finite], s=8, color=COLOURS[0], alpha=0.35, linewidths=0,
                 label="one slice")
    levels = np.unique(requested[finite])
    medians = [np.median(measured[finite & (requested == level)]) for level in levels]
    axes.plot(levels, medians, marker="o", color=COLOURS[1], label="median")
    span = [float(np.min(requested)), float(np.max(requested))]
    axes.plot(span, span, linestyle="--", color=COLOURS[5], linewidth=1, label="ideal")
    axes.set(title=title, xlabel=x_label, ylabel=y_label)
    axes.legend(frameon=False, fontsize=8)
    return _image(plt, figure)


def spectra_chart(spectra: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
                  bands: Sequence[tuple[float, float]] = (), size: tuple[float, float] = (5.2, 3.4)) -> Any:
    """Radial power spectra (frequencies in cycles/px, power) as lines, power on a log scale, ``bands`` shaded."""
    plt, figure, axes = _figure(size)
    for index, (lo, hi) in enumerate(bands):  # alternate shades: neighbouring bands stay apart
        axes.axvspan(lo, hi, color=("#eeeeee", "#dddddd")[index % 2], zorder=0)
    for index, (name, (frequencies, power)) in enumerate(spectra.items()):
        axes.plot(frequencies, power, color=COLOURS[index % len(COLOURS)], linewidth=1.2, label=name)
    axes.set_yscale("log")
    axes.set(title=title, xlabel="spatial frequency (cycles/px)", ylabel="power (HU² per coefficient)", xlim=(0, 0.5))
    axes.legend(frameon=False, fontsize=8)
    return _image(plt, figure)


def side_by_side(*images: Any) -> Any:
    """PIL images next to each other on white, top-aligned."""
    from PIL import Image

    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for image in images:
        out.paste(image, (x, 0))
        x += image.width
    return out
