"""The L/T ablation (the paper's Fig. 4 grid and the post-processing rows) from one recording per image.

:func:`ablation` records each image once (:meth:`Grounder.record_batch
<groundiff_core.engine.grounder.Grounder.record_batch>`, every layer, the widest window asked
for) and computes every setting's heatmaps from that recording (:meth:`Recording.aggregate
<groundiff_core.engine.record.Recording.aggregate>`), exactly the maps a fresh grounding with that
setting would give; each pair is scored with the runner's boxes
(:func:`~groundiff_core.evaluation.boxes.scored_boxes`). :func:`grid_cells` averages a metric per
(L, T) cell by class first, as every class-averaged figure of the book.

:func:`run_ablation` is the same in a folder, resumably: ``run.json`` names what it computes (the
grounder with its model's weights fingerprint, the settings, the window, the pairs' content) and
``ablation.jsonl`` gets each image's rows as soon as they exist, so an interrupted run loses at most
one image and a rerun continues; ``shard="i/n"`` takes every n-th image. :func:`load_ablation` reads
one or several such folders (shards) back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

__all__ = ["AblationResult", "ablation", "ablation_identity", "ablation_settings", "grid_cells", "run_ablation", "load_ablation",
           "ROWS", "RUN"]

#: The post-processing rows of the ablation page: the paper code's layers and window, with and
#: without the Gaussian and Otsu (``Recording.aggregate`` arguments besides ``config``).
POSTPROCESSING = {"paper code (layers 3, 4, 6, 7)": {}, "no Gaussian": {"smooth": False},
                  "no Otsu": {"otsu": False}, "neither": {"smooth": False, "otsu": False}}

ROWS, RUN = "ablation.jsonl", "run.json"


@dataclass
class AblationResult:
    """``rows``: one dict per (pair, setting): ``pair_id``, ``category``, ``setting`` (the key of
    ``settings``, or ``"grid"`` for an ``(L, T)`` key), ``L``, ``T`` (None outside the grid) and the
    metrics; ``example``: ``(image, pair, boxes, recording)`` of the first scorable pair."""

    rows: list[dict]
    example: tuple | None


def ablation(grounder, pairs: Sequence[Any], settings: Mapping[Hashable, Mapping[str, Any]], *,
             window: tuple[int, int], batch_images: int = 1, on_image=None, skip=frozenset()) -> AblationResult:
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
    on_image : called with each image's rows as soon as they exist (:func:`run_ablation` writes them)
    skip : pair ids already done: the images all of whose pairs are in it are not recorded again
    """
    from groundiff_core.evaluation import metrics
    from groundiff_core.evaluation.boxes import scored_boxes
    from groundiff_core.io.datasets import group_by_image
    from groundiff_core.io.images import load_image

    rows: list[dict] = []
    example = None
    groups = [g for g in group_by_image(pairs).values() if not {p.pair_id for p in g} <= set(skip)]
    size = grounder.model.input_size
    for b0 in range(0, len(groups), max(1, int(batch_images))):
        chunk = groups[b0:b0 + max(1, int(batch_images))]
        images = [load_image(group[0].image_path) for group in chunk]
        phrase_lists = [list(dict.fromkeys(p.phrase for p in group)) for group in chunk]
        for group, image, phrases, rec in zip(chunk, images, phrase_lists,
                                              grounder.record_batch(images, phrase_lists, window=window)):
            scored = {p.pair_id: scored_boxes(p, image.shape, size)[0] for p in group}
            scorable = [p for p in group if len(scored[p.pair_id])]
            first = len(rows)
            for key, kw in settings.items():
                maps = rec.aggregate(**kw).heatmaps
                grid = isinstance(key, tuple)
                for p in scorable:
                    m = metrics.all_metrics(maps[phrases.index(p.phrase)], scored[p.pair_id])
                    rows.append({"pair_id": p.pair_id, "category": p.category,
                                 "L": key[0] if grid else None, "T": key[1] if grid else None,
                                 "setting": "grid" if grid else key, **m})
            if on_image is not None:
                on_image(rows[first:], [p.pair_id for p in group])
            if example is None and scorable:
                example = (image, scorable[0], scored[scorable[0].pair_id], rec.to("cpu"))
    return AblationResult(rows, example)


def ablation_identity(grounder, pairs: Sequence[Any], settings: Mapping[Hashable, Mapping[str, Any]],
              window: tuple[int, int]) -> dict:
    """What an ablation folder computes, as content (no paths): grounder and model, settings, data."""
    from groundiff_core.evaluation.identity import run_identity
    from groundiff_core.util.fingerprint import jsonable

    ident = run_identity(grounder, pairs, None, None)
    return {"method": ident["method"], "data": ident["data"], "window": list(window),
            "settings": {json.dumps(jsonable(k)): jsonable(v) for k, v in settings.items()}}


def run_ablation(grounder, pairs: Sequence[Any], settings: Mapping[Hashable, Mapping[str, Any]], *,
                 window: tuple[int, int], out_dir: str | os.PathLike, batch_images: int = 1,
                 shard: str | None = None) -> AblationResult:
    """:func:`ablation` into ``out_dir``, resumably (see the module docstring); the rows of every
    pair of this shard, those of earlier sessions included. A folder made for other settings, pairs
    or weights is refused, naming what differs."""
    from groundiff_core.evaluation.identity import diff_paths
    from groundiff_core.evaluation.options import parse_shard
    from groundiff_core.io.datasets import group_by_image
    from groundiff_core.util.clock import now
    from groundiff_core.util.fileio import folder_lock, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ident = ablation_identity(grounder, pairs, settings, window)
    if shard:
        i, n = parse_shard(shard)
        groups = list(group_by_image(pairs).values())
        pairs = [p for k, g in enumerate(groups) if k % n == i for p in g]
    with folder_lock(out, "ablation"):
        run = json.loads((out / RUN).read_text()) if (out / RUN).is_file() else None
        if run is not None and run.get("identity") != ident:
            raise ValueError(f"{out} holds an ablation of other settings, pairs or weights (differs in "
                             + ", ".join(diff_paths(run.get("identity", {}), ident)) + "); choose another folder")
        run = run or {"identity": ident, "created": now(), "sessions": []}
        run["sessions"].append({"started": now(), "shard": shard, "status": "running"})
        write_json(out / RUN, run)
        done = {r["pair_id"] for r in _read_rows(out / ROWS)}
        _drop_cut_line(out / ROWS)

        def keep(rows: list[dict], _ids: list[str]) -> None:
            with open(out / ROWS, "a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
                fh.flush()
                os.fsync(fh.fileno())

        result = ablation(grounder, pairs, settings, window=window, batch_images=batch_images, on_image=keep,
                          skip=done)
        run["sessions"][-1].update(status="finished", ended=now())
        write_json(out / RUN, run)
    ids = {p.pair_id for p in pairs}
    return AblationResult([r for r in _read_rows(out / ROWS) if r["pair_id"] in ids], result.example)


def _drop_cut_line(path: Path) -> None:
    """Cut a last line an interruption left unfinished, so that the next row starts on a line of its own."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            from groundiff_core.util.fileio import atomic_write

            atomic_write(path, data[:data.rfind(b"\n") + 1])


def _read_rows(path: Path) -> list[dict]:
    """The rows of an ``ablation.jsonl``; a last line cut by an interruption is left out."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def load_ablation(*folders: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(identity, rows)`` of one ablation folder or of the shards of one ablation (the same
    identity in every ``run.json``, else ValueError)."""
    ident, rows = None, []
    for folder in folders:
        run_file = Path(folder) / RUN
        if not run_file.is_file():
            raise FileNotFoundError(f"{folder} is not an ablation folder: {RUN} is missing")
        this = json.loads(run_file.read_text())["identity"]
        if ident is not None and this != ident:
            raise ValueError(f"{folder} is an ablation of other settings, pairs or weights than {folders[0]}")
        ident = this
        rows += _read_rows(Path(folder) / ROWS)
    return ident or {}, rows


def ablation_settings(config, L_values: Sequence[int], T_values: Sequence[float], n_layers: int):
    """``(settings, window)``: the ablation page's settings (every ``(L, T)`` cell with ``L`` middle
    layers and a window of ``T`` % of the steps, L capped at the model's ``n_layers``, then the
    :data:`POSTPROCESSING` rows on ``config``) and the steps ``[start, stop)`` they need recorded."""
    settings: dict = {(int(L), T): dict(middle_layers=int(L), window_percent=T)
                      for L in L_values if 1 <= int(L) <= n_layers for T in T_values}
    settings.update({name: dict(config=config, **kw) for name, kw in POSTPROCESSING.items()})
    windows = [config.with_window_percent(T).window for T in T_values]
    return settings, (min(w[0] for w in windows + [config.window]), max(w[1] for w in windows + [config.window]))


def grid_cells(rows, metric: str):
    """A pandas table ``L x T`` of ``metric``'s class-averaged mean over the grid rows of ``rows``
    (an :class:`AblationResult`'s rows or a DataFrame of them): the mean per class, then over classes."""
    import pandas as pd

    df = pd.DataFrame(rows)
    grid = df[df.setting == "grid"].astype({"L": int, "T": int})
    return grid.groupby(["L", "T", "category"])[metric].mean().groupby(["L", "T"]).mean().unstack("T")
