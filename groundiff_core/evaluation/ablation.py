"""The L/T ablation (the paper's Fig. 4 grid and the post-processing rows) from one recording per image.

:func:`ablation` records each image once (:meth:`Grounder.record_batch
<groundiff_core.engine.grounder.Grounder.record_batch>`, every layer, the widest window asked
for) and computes every setting's heatmaps from that recording (:meth:`Recording.aggregate
<groundiff_core.engine.record.Recording.aggregate>`), exactly the maps a fresh grounding with that
setting would give; each pair is scored with the runner's boxes
(:func:`~groundiff_core.evaluation.boxes.scored_boxes`). :func:`grid_cells` averages a metric per
(L, T) cell by class first, as every class-averaged figure of the book.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

__all__ = ["AblationResult", "ablation", "grid_cells"]


@dataclass
class AblationResult:
    """``rows``: one dict per (pair, setting): ``pair_id``, ``category``, ``setting`` (the key of
    ``settings``, or ``"grid"`` for an ``(L, T)`` key), ``L``, ``T`` (None outside the grid) and the
    metrics; ``example``: ``(image, pair, boxes, recording)`` of the first scorable pair."""

    rows: list[dict]
    example: tuple | None


def ablation(grounder, pairs: Sequence[Any], settings: Mapping[Hashable, Mapping[str, Any]], *,
             window: tuple[int, int], batch_images: int = 1) -> AblationResult:
    """Score ``pairs`` under every setting of ``settings`` from one recording per image.

    Parameters
    ----------
    grounder : a :class:`~groundiff_core.engine.grounder.Grounder` (its config gives the schedule)
    pairs : the pairs (any number per image)
    settings : key -> keyword arguments of ``Recording.aggregate`` (``middle_layers``,
        ``window_percent``, ``layers``, ``window``, ``smooth``, ``otsu``, ``config``); a key
        ``(L, T)`` marks a grid cell
    window : the inversion steps ``[start, stop)`` to record: the union of the settings' windows
    batch_images : images per inversion
    """
    from groundiff_core.evaluation import metrics
    from groundiff_core.evaluation.boxes import scored_boxes
    from groundiff_core.io.datasets import group_by_image
    from groundiff_core.io.images import load_image

    rows: list[dict] = []
    example = None
    groups = list(group_by_image(pairs).values())
    size = grounder.model.input_size
    for b0 in range(0, len(groups), max(1, int(batch_images))):
        chunk = groups[b0:b0 + max(1, int(batch_images))]
        images = [load_image(group[0].image_path) for group in chunk]
        phrase_lists = [list(dict.fromkeys(p.phrase for p in group)) for group in chunk]
        for group, image, phrases, rec in zip(chunk, images, phrase_lists,
                                              grounder.record_batch(images, phrase_lists, window=window)):
            scored = {p.pair_id: scored_boxes(p, image.shape, size)[0] for p in group}
            scorable = [p for p in group if len(scored[p.pair_id])]
            for key, kw in settings.items():
                maps = rec.aggregate(**kw).heatmaps
                grid = isinstance(key, tuple)
                for p in scorable:
                    m = metrics.all_metrics(maps[phrases.index(p.phrase)], scored[p.pair_id])
                    rows.append({"pair_id": p.pair_id, "category": p.category,
                                 "L": key[0] if grid else None, "T": key[1] if grid else None,
                                 "setting": "grid" if grid else key, **m})
            if example is None and scorable:
                example = (image, scorable[0], scored[scorable[0].pair_id], rec.to("cpu"))
    return AblationResult(rows, example)


def grid_cells(rows, metric: str):
    """A pandas table ``L x T`` of ``metric``'s class-averaged mean over the grid rows of ``rows``
    (an :class:`AblationResult`'s rows or a DataFrame of them): the mean per class, then over classes."""
    import pandas as pd

    df = pd.DataFrame(rows)
    grid = df[df.setting == "grid"].astype({"L": int, "T": int})
    return grid.groupby(["L", "T", "category"])[metric].mean().groupby(["L", "T"]).mean().unstack("T")
