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

from groundiff_core.evaluation.compare import MIN_PAIRS

__all__ = [
    "grid",
    "screen",
    "show_image",
    "draw_boxes",
    "overlay",
    "side_labels",
    "fmt_ci",
    "fmt_diff",
    "fmt_number",
    "show_table",
    "ci_frame",
    "savefig",
    "publish",
    "placeholder",
    "qualitative_grid",
    "legibility_problems",
    "settings_text",
    "MAX_FIGURE_IN",
    "MIN_PANEL_IN",
    "MAX_COLUMNS",
]

BOX_COLOUR = "#39ff14"
HEAT_CMAP = "inferno"

#: The widest figure a page shows at its own size, in inches: the book's text column is about 800 px
#: and the pages render figures at 100 dpi, so a wider figure is scaled down, its text with it.
MAX_FIGURE_IN = 8.0
#: The narrowest image panel, in inches: 128 px at 100 dpi, the phantom's own resolution, so that no
#: image is shown below its pixels and a panel's title stays readable.
MIN_PANEL_IN = 1.28
#: The most image panels side by side that fit :data:`MAX_FIGURE_IN` at :data:`MIN_PANEL_IN` with
#: the layout's padding.
MAX_COLUMNS = 5


def grid(n: int, ncols: int = 4, size: float = 2.4, title: str | None = None):
    """A figure with ``n`` square panels on ``ncols`` columns; returns ``(fig, axes)`` with axes
    flattened (unused panels hidden) and ticks off. At most :data:`MAX_COLUMNS` columns (more
    panels wrap onto further rows) and at most :data:`MAX_FIGURE_IN` wide (``size`` shrinks to fit),
    so that the page shows the figure at its own size."""
    import matplotlib.pyplot as plt

    n = max(int(n), 1)
    ncols = max(1, min(ncols, n, MAX_COLUMNS))
    size = min(size, MAX_FIGURE_IN / ncols)
    nrows = int(np.ceil(n / ncols))
    # each row gets room for a two-line panel title above its square, so that titles never shrink the image
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.45) * nrows + (0.4 if title else 0)),
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


TOO_FEW_FOR_INTERVAL = "too few for an interval"


def _pairs(stat: Mapping[str, Any]) -> int | None:
    n = stat.get("n_pairs", stat.get("n"))
    return None if n is None else int(n)


def fmt_ci(stat: Mapping[str, Any] | None, digits: int = 3, min_pairs: int = MIN_PAIRS) -> str:
    """``{"mean", "ci_low", "ci_high"[, "n_pairs" | "n"]}`` -> ``"0.612 [0.580, 0.650]"``; missing -> ``"n/a"``.

    Below ``min_pairs`` pairs (:data:`~groundiff_core.evaluation.compare.MIN_PAIRS`; pass
    ``MIN_PER_CLASS`` for one class's figure) the interval is not printed: ``"0.612 (4 pairs: too
    few for an interval)"``. The book check refuses an interval on a page of fewer pairs.
    """
    if not stat or stat.get("mean") is None:
        return "n/a"
    m = f"{stat['mean']:.{digits}f}"
    if stat.get("ci_low") is None or stat.get("ci_high") is None:
        return m
    n = _pairs(stat)
    if n is not None and n < min_pairs:
        return f"{m} ({n} pairs: {TOO_FEW_FOR_INTERVAL})"
    return f"{m} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def fmt_diff(d: Mapping[str, Any] | None, digits: int = 3, min_pairs: int = MIN_PAIRS) -> str:
    """A paired difference ``{"difference", "ci_low", "ci_high", "n_pairs"}`` -> ``"+0.012 [+0.004, +0.020]"``
    (no interval below ``min_pairs`` pairs, as :func:`fmt_ci`)."""
    if not d or d.get("difference") is None:
        return "n/a"
    n = _pairs(d)
    if n is not None and n < min_pairs:
        return f"{d['difference']:+.{digits}f} ({n} pairs: {TOO_FEW_FOR_INTERVAL})"
    return f"{d['difference']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def ci_frame(stats: Mapping[str, Mapping[str, Mapping[str, Any]]], metrics: Sequence[str],
             names: Mapping[str, str] | None = None, digits: int = 3, min_pairs: int = MIN_PAIRS):
    """A table (pandas DataFrame) of ``"mean [low, high]"`` strings: one row per key of ``stats``
    (``stats[row][metric]`` is a summary statistic), one column per metric (renamed by ``names``);
    rows of fewer than ``min_pairs`` pairs get no interval (:func:`fmt_ci`)."""
    import pandas as pd

    names = dict(names or {})
    rows = {r: {names.get(m, m): fmt_ci(s.get(m), digits, min_pairs) for m in metrics} for r, s in stats.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def savefig(fig, output_dir, name: str, dpi: int = 110) -> str:
    """Save ``fig`` as ``output_dir/name.png`` (the book shows the inline copy); returns the path."""
    from pathlib import Path

    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return str(path)


def publish(fig, output_dir, name: str, dpi: int = 110) -> None:
    """Save ``fig`` as ``output_dir/name.png`` and hand it to the book page as the glued output
    ``name`` (myst-nb ``glue``): a ``{glue:figure} name`` directive in a Markdown cell then shows it
    as a numbered, captioned figure that other pages can reference by its ``:name:``. Closes the
    figure (it is shown once, where the directive is). The PNG is ``output_dir/name.png``.
    Refuses (``ValueError``) a figure the page would shrink or whose image panels would be too small
    to read (:func:`legibility_problems`): a notebook then fails instead of rendering it."""
    import matplotlib.pyplot as plt

    savefig(fig, output_dir, name, dpi=dpi)
    problems = legibility_problems(fig)
    if problems:
        plt.close(fig)
        raise ValueError(f"figure {name!r} would not be legible on the page: " + "; ".join(problems))
    try:
        from myst_nb import glue
    except ImportError:  # outside the book's environment: the PNG is the result
        plt.close(fig)
        return None
    glue(name, fig, display=False)
    plt.close(fig)
    return None  # nothing to print: a path above the figure is noise on the page (the book check refuses one)


def legibility_problems(fig) -> list[str]:
    """Why ``fig`` would not be legible on a page (empty: it would): wider than
    :data:`MAX_FIGURE_IN` (the page scales it down, text included), or an image panel narrower than
    :data:`MIN_PANEL_IN` (measured after layout: call it on a drawn or saved figure)."""
    width, _ = fig.get_size_inches()
    out = []
    if width > MAX_FIGURE_IN + 1e-6:
        out.append(f"{width:.1f} in wide, more than {MAX_FIGURE_IN:g} in (the page would shrink it and its text)")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    if panels:
        narrowest = min(ax.get_position().width * width for ax in panels)
        if narrowest < MIN_PANEL_IN - 1e-6:
            out.append(f"an image panel is {narrowest:.2f} in wide, less than {MIN_PANEL_IN:g} in "
                       f"({int(MIN_PANEL_IN * 100)} px on the page)")
    return out


def fmt_number(x: Any) -> Any:
    """A table cell as the book prints it: 3 decimals below 1 in magnitude (0.006, 0.612), else 3
    significant digits (1.23, 12.3, 123; integers as they are); anything else unchanged."""
    if isinstance(x, bool) or not isinstance(x, (float, np.floating)):
        return x
    if not np.isfinite(x):
        return "-" if np.isnan(x) else str(x)
    if float(x).is_integer() and abs(x) >= 1:
        return f"{int(x)}"
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def settings_text(settings: Mapping[str, Any], skip: Sequence[str] = ("class", "model")) -> str:
    """A method's ``describe()`` as one readable line, ``"key=value, ..."``, nested mappings as
    ``"outer.key=value"``, the keys ``skip`` left out: a table cell a reader can read whole."""
    parts = []
    for key, value in settings.items():
        if key in skip:
            continue
        if isinstance(value, Mapping):
            parts += [f"{key}.{k}={v}" for k, v in value.items()]
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def show_table(table, output_dir, name: str, *, index: bool = True):
    """Show a DataFrame on the page with numbers to 3 significant digits (:func:`fmt_number`), save it
    in full precision as ``output_dir/name.csv`` and show a link to download that CSV.

    The link is a MyST ``{download}`` role relative to the page, which sits beside ``output_dir``
    (``book/notebooks/NN_name.ipynb`` and ``book/notebooks/NN_name_files/``)."""
    from pathlib import Path

    from IPython.display import Markdown, display

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / f"{name}.csv"
    table.to_csv(csv, index=index)
    shown = table.map(fmt_number) if hasattr(table, "map") else table.applymap(fmt_number)
    import pandas as pd

    with pd.option_context("display.max_colwidth", None):  # a settings cell is shown whole, never cut
        display(shown if index else shown.style.hide(axis="index"))
    display(Markdown(f"{{download}}`Download this table as CSV <{folder.name}/{csv.name}>`"))


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
    with the same methods in the same order. Returns the figure. When the image and the methods are
    more than :data:`MAX_COLUMNS` panels, the figure is transposed (one column per example, the
    methods' rows labelled on the left), so that no panel falls under :data:`MIN_PANEL_IN`.
    """
    import matplotlib.pyplot as plt

    methods = list(rows[0][3]) if rows else []
    for i, (_, _, _, maps) in enumerate(rows):
        if list(maps) != methods:
            raise ValueError(f"row {i} has methods {list(maps)}, expected {methods}")
    per_example = 1 + len(methods)
    across = per_example <= MAX_COLUMNS
    if not across and len(rows) > MAX_COLUMNS:
        raise ValueError(f"{len(rows)} examples of {per_example} panels each do not fit {MAX_COLUMNS} columns "
                         "either way: show fewer examples or fewer methods")
    nrows, ncols = (max(1, len(rows)), per_example) if across else (per_example, max(1, len(rows)))
    size = min(MAX_FIGURE_IN / ncols, max(size, 5.0 / ncols))  # 5 in at least: a figure of few columns stays readable
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False,
                             constrained_layout=True)
    if not across:
        axes = axes.T  # axes[example, panel] either way
    for i, (label, image, boxes, maps) in enumerate(rows):
        overlay(axes[i, 0], image, None, boxes, title=label, fontsize=fontsize)
        side_labels(axes[i, 0])
        for j, m in enumerate(methods, start=1):
            first = i == 0
            overlay(axes[i, j], image, maps[m], boxes, title=m if first and across else None, fontsize=fontsize)
            if first and not across:
                axes[i, j].set_ylabel(m, fontsize=fontsize)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
