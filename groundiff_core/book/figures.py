"""Plotting helpers for the book's notebooks: images, heatmap overlays, boxes, metric tables.

Pure presentation: nothing here computes a heatmap or a metric. Conventions as everywhere in the
project: images and heatmaps are ``[H, W]`` arrays (heatmaps may hold NaN where the model never
looked: drawn transparent), boxes are ``(x, y, w, h)`` in the image's pixels, ``x`` along columns.
Radiological convention: the patient's right is on the image's left (labelled "R" by
:func:`side_labels`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "grid",
    "screen",
    "show_image",
    "draw_boxes",
    "overlay",
    "side_labels",
    "fmt_ci",
    "ci_frame",
    "savefig",
    "publish",
    "placeholder",
    "qualitative_grid",
]

BOX_COLOUR = "#39ff14"
HEAT_CMAP = "inferno"


def grid(n: int, ncols: int = 4, size: float = 2.4, title: str | None = None):
    """A figure with ``n`` square panels on ``ncols`` columns; returns ``(fig, axes)`` with axes
    flattened (unused panels hidden) and ticks off."""
    import matplotlib.pyplot as plt

    n = max(int(n), 1)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if title else 0)),
                             squeeze=False, constrained_layout=True)
    axes = axes.ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig, axes[:n]


def screen(image: np.ndarray, show: bool = True) -> np.ndarray:
    """``image`` itself, or (``show=False``) a flat mid-grey array of its shape: the heatmaps and
    boxes drawn over it keep their place, the picture (e.g. a patient's radiograph) is not shown."""
    image = np.asarray(image)
    return image if show else np.full(image.shape, 0.5, dtype=np.float32)


def show_image(ax, image: np.ndarray, title: str | None = None, fontsize: int = 8) -> None:
    """A grayscale image in [0, 1] (bright = dense)."""
    ax.imshow(np.asarray(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def draw_boxes(ax, boxes: Iterable[Sequence[float]], colour: str = BOX_COLOUR, lw: float = 1.4,
               style: str = "-") -> None:
    """Rectangles for ``(x, y, w, h)`` boxes in pixel units (pixel ``(r, c)`` spans
    ``[c - 0.5, c + 0.5]`` on matplotlib's image axes)."""
    from matplotlib.patches import Rectangle

    for x, y, w, h in np.asarray(list(boxes), dtype=float).reshape(-1, 4):
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, lw=lw, ls=style))


def overlay(ax, image: np.ndarray, heatmap: np.ndarray | None, boxes=None, title: str | None = None,
            alpha: float = 0.55, vmax: float | None = 1.0, fontsize: int = 8, cmap: str = HEAT_CMAP):
    """The image, the heatmap over it (NaN transparent, zeros faint) and the ground-truth boxes.
    Returns the heatmap's ``AxesImage`` (for a colour bar) or None."""
    show_image(ax, image, title=title, fontsize=fontsize)
    im = None
    if heatmap is not None:
        h = np.asarray(heatmap, dtype=float)
        im = ax.imshow(np.ma.masked_invalid(h), cmap=cmap, alpha=alpha, vmin=0.0,
                       vmax=vmax if vmax is not None else np.nanmax(h), interpolation="nearest")
    if boxes is not None:
        draw_boxes(ax, boxes)
    return im


def side_labels(ax, fontsize: int = 7) -> None:
    """Mark the patient's right (image left) and left (image right)."""
    kw = dict(transform=ax.transAxes, color="white", fontsize=fontsize, va="top", weight="bold")
    ax.text(0.03, 0.97, "R", ha="left", **kw)
    ax.text(0.97, 0.97, "L", ha="right", **kw)


def fmt_ci(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``{"mean", "ci_low", "ci_high"}`` -> ``"0.612 [0.580, 0.650]"``; missing -> ``"n/a"``."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    m = f"{stat['mean']:.{digits}f}"
    if stat.get("ci_low") is None or stat.get("ci_high") is None:
        return m
    return f"{m} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def fmt_diff(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    """A paired difference ``{"difference", "ci_low", "ci_high"}`` -> ``"+0.012 [+0.004, +0.020]"``."""
    if not d or d.get("difference") is None:
        return "n/a"
    return f"{d['difference']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def ci_frame(stats: Mapping[str, Mapping[str, Mapping[str, Any]]], metrics: Sequence[str],
             names: Mapping[str, str] | None = None, digits: int = 3):
    """A table (pandas DataFrame) of ``"mean [low, high]"`` strings: one row per key of ``stats``
    (``stats[row][metric]`` is a summary statistic), one column per metric (renamed by ``names``)."""
    import pandas as pd

    names = dict(names or {})
    rows = {r: {names.get(m, m): fmt_ci(s.get(m), digits) for m in metrics} for r, s in stats.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def savefig(fig, output_dir, name: str, dpi: int = 110) -> str:
    """Save ``fig`` as ``output_dir/name.png`` (the book shows the inline copy); returns the path."""
    from pathlib import Path

    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return str(path)


def publish(fig, output_dir, name: str, dpi: int = 110) -> str:
    """Save ``fig`` as ``output_dir/name.png`` and hand it to the book page as the glued output
    ``name`` (myst-nb ``glue``): a ``{glue:figure} name`` directive in a Markdown cell then shows it
    as a numbered, captioned figure that other pages can reference by its ``:name:``. Closes the
    figure (it is shown once, where the directive is). Returns the PNG's path."""
    import matplotlib.pyplot as plt

    path = savefig(fig, output_dir, name, dpi=dpi)
    try:
        from myst_nb import glue
    except ImportError:  # outside the book's environment: the PNG is the result
        plt.close(fig)
        return path
    glue(name, fig, display=False)
    plt.close(fig)
    return path


def placeholder(text: str, size: tuple[float, float] = (4.0, 0.8)):
    """A small figure that only says ``text``: glued where a figure has nothing to show, so that
    the page's numbered figure still exists and says why it is empty."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    return fig


def qualitative_grid(rows: Sequence[tuple[str, np.ndarray, Any, Mapping[str, np.ndarray]]], size: float = 2.2,
                     fontsize: int = 7):
    """The paper's kind of qualitative figure: one row per example, the image with its ground-truth
    boxes first, then each method's heatmap over it (same boxes), columns titled by method.

    ``rows``: ``(label, image [H, W], boxes (x, y, w, h), {method: heatmap [H, W]})``, every row
    with the same methods in the same order. Returns the figure.
    """
    import matplotlib.pyplot as plt

    methods = list(rows[0][3]) if rows else []
    ncols = 1 + len(methods)
    fig, axes = plt.subplots(max(1, len(rows)), ncols, figsize=(size * ncols, size * max(1, len(rows))),
                             squeeze=False, constrained_layout=True)
    for i, (label, image, boxes, maps) in enumerate(rows):
        if list(maps) != methods:
            raise ValueError(f"row {i} has methods {list(maps)}, expected {methods}")
        overlay(axes[i, 0], image, None, boxes, title=label, fontsize=fontsize)
        side_labels(axes[i, 0])
        for j, m in enumerate(methods, start=1):
            overlay(axes[i, j], image, maps[m], boxes, title=m if i == 0 else None, fontsize=fontsize)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
