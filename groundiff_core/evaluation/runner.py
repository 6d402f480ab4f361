"""The evaluation runner: any grounding method x a dataset -> per-pair results and a summary.

Files in the output folder ``DIR``:

* ``run.json`` - what is being evaluated, as content fingerprints, never paths (method, config,
  the model's weights, the annotations, shard): a rerun with the same ``DIR`` resumes only if the
  method, config, weights, dataset name and shard match, otherwise it is refused; it also lists
  every session (start, end, status: finished, interrupted, failed, or killed when a later start
  finds it never ended), with the paths used, as information;
* ``results.jsonl`` - one JSON line per pair, appended and flushed as soon as its image is done,
  so an interrupted run loses at most the image (or batch of images) in progress. Each row carries
  the pair's content ``key`` (phrase, category, boxes, annotated size, the image file's SHA-256 and
  the other findings of the same image): a rerun recomputes exactly the pairs whose key changed,
  so edited annotations or images never leave stale rows. ``status`` is
  ``"ok"`` or ``"skipped"`` (with ``reason``: missing/unreadable image, no box inside the image);
  skipped pairs are retried by a rerun. An ``ok`` row holds ``pair_id, image_path, phrase,
  category, image_hw, boxes`` (as scored: original pixels, fitted to the image read), the metrics
  of :data:`~groundiff_core.evaluation.metrics.METRICS`, ``others`` (for every other pair of the
  same image: its ``pair_id``, ``category``, this heatmap's ``auc`` on its boxes and the
  ``gt_iou`` of the two ground truths: the text-sensitivity check), ``seconds`` (grounding time per phrase) and ``box_notes`` when
  boxes had to be rescaled or clipped. Non-finite numbers are written as ``null``;
* ``summary.json`` / ``summary.csv`` - overall, per-class and class-averaged metrics with bootstrap
  95% confidence intervals, the text-sensitivity figure, skipped images, versions and times.

This module is the loop (:func:`evaluate`: select, ground, score, append); the run's identity is
:mod:`~groundiff_core.evaluation.identity`, the folder's files :mod:`~groundiff_core.evaluation.results`,
the statistics :mod:`~groundiff_core.evaluation.summary` and the merge of shards
:mod:`~groundiff_core.evaluation.shards`. Import them from :mod:`groundiff_core.evaluation`.

Writes go through :mod:`groundiff_core.util.fileio`: whole files are replaced atomically and a lock
on ``DIR`` refuses a second concurrent writer.

Pairs are grouped by image: ``method.ground(image, phrases)`` is called once per image with all its
phrases (one DDIM inversion serves them all). The method may be anything with that verb
(:class:`groundiff_core.engine.grounder.Grounder`, :mod:`groundiff_core.methods.baselines`,
Captum methods) and a ``describe()`` (or ``name``) for its identity.

Metrics (:mod:`groundiff_core.evaluation.metrics`) are computed on the original image grid, against the
pair's boxes (rescaled if the image's size differs from the annotated one, clipped to the image).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from groundiff_core.conventions import CONVENTIONS, check_conventions
from groundiff_core.evaluation import metrics as M
from groundiff_core.evaluation.boxes import boxes_seen_by_model
from groundiff_core.evaluation.identity import method_identity, pair_keys, run_identity
from groundiff_core.evaluation.options import check_options, parse_shard
from groundiff_core.evaluation.results import (RESULTS, latest, open_run, out_folder, read_jsonl,
                                               run_facts, session)
from groundiff_core.evaluation.summary import summarize, write_summary
from groundiff_core.io.datasets.common import GroundingPair, fit_boxes_to_image, group_by_image, subset
from groundiff_core.io.preprocess import CropGeometry
from groundiff_core.util.fileio import folder_lock
from groundiff_core.util.fingerprint import jsonable

__all__ = ["evaluate", "PAPER_INPUT_SIZE"]

#: The paper model's input size: the centre crop assumed for methods that have no model.
PAPER_INPUT_SIZE = 512


def _shard_images(pairs: Sequence[GroundingPair], shard: tuple[int, int]) -> list[GroundingPair]:
    """Pairs of the images of this shard: image ``j`` (first-appearance order) goes to ``j % n``."""
    i, n = shard
    if n == 1:
        return list(pairs)
    keep = {path for j, path in enumerate(group_by_image(pairs)) if j % n == i}
    return [p for p in pairs if p.image_path in keep]


def _load(path: Path) -> np.ndarray:
    from groundiff_core.io.images import load_image

    return load_image(path)


def _pair_row(pair: GroundingPair, heatmap: np.ndarray, hw: tuple[int, int],
              image_pairs: Sequence[GroundingPair], conventions: str = "paper",
              crop_size: int = PAPER_INPUT_SIZE) -> dict:
    """Metrics of one pair, plus the same heatmap's AUC on each other pair of the image.

    The metrics follow ``conventions``; ``alternative`` holds the same heatmap scored under the
    other conventions (so a table can show both without grounding twice). A pair left without
    boxes is skipped: none inside the image, or (paper) none inside the model's centre crop.
    """
    fitted, notes = fit_boxes_to_image(pair, *hw)
    boxes, crop_notes = boxes_seen_by_model(fitted, hw, crop_size, conventions)  # = scored_boxes(pair, ...)
    row: dict[str, Any] = {"pair_id": pair.pair_id, "image_path": str(pair.image_path),
                           "phrase": pair.phrase, "category": pair.category,
                           "image_hw": list(hw), "boxes": boxes.round(3).tolist(),
                           "conventions": conventions}
    if notes or crop_notes:
        row["box_notes"] = notes + crop_notes
    if len(fitted) == 0:
        row.update(status="skipped", reason="no box inside the image")
        return row
    if len(boxes) == 0:
        row.update(status="skipped", reason="no box inside the model's centre crop")
        return row
    row["status"] = "ok"
    scorer = M.HeatmapScorer(heatmap, conventions)  # sorted once, then scored against every box set
    row.update(scorer.all(boxes))
    other = next(c for c in CONVENTIONS if c != conventions)
    other_boxes, _ = boxes_seen_by_model(fitted, hw, crop_size, other)
    if len(other_boxes):
        row["alternative"] = {"conventions": other,
                              **scorer.under(other).all(other_boxes)}
    own = M.box_mask(hw, boxes)
    others = []
    for q in image_pairs:
        if q.pair_id == pair.pair_id:
            continue
        qb, _ = fit_boxes_to_image(q, *hw)
        if len(qb) == 0:
            continue
        qm = M.box_mask(hw, qb)
        union = np.count_nonzero(own | qm)
        others.append({"pair_id": q.pair_id, "category": q.category,
                       "auc": scorer.auc(qb),
                       "gt_iou": float(np.count_nonzero(own & qm) / union) if union else 0.0})
    row["others"] = others
    return row


def evaluate(method: Any, pairs: Sequence[GroundingPair], out_dir: str | os.PathLike, *,
             dataset: dict | None = None, n_pairs: int | None = None,
             shard: str | tuple[int, int] | None = None, seed: int = 0, n_boot: int = 1000,
             batch_images: int = 1, progress: bool = True, info: dict | None = None,
             conventions: str = "paper", dropped: Sequence[dict] | None = None) -> dict:
    """Evaluate ``method`` on ``pairs``, resumably, in ``out_dir``; return the summary.

    Parameters
    ----------
    method : anything with ``.ground(image, phrases) -> Heatmaps`` (``.heatmaps`` ``[K, H, W]`` on
        the original grid, NaN = ignore) and ``describe()``/``name`` for its identity
    pairs : the dataset (all of it: other pairs of the same image give the text-sensitivity check
        its "other finding" boxes even when outside the evaluated subset)
    out_dir : results folder; rerunning with the same folder resumes (same identity required)
    dataset : a small description recorded in the identity (e.g. ``{"name": "mscxr",
        "split": "test"}``); a digest of the pair ids is always added
    n_pairs : evaluate a seeded random subset of this many pairs (nested in ``n``, see
        :func:`groundiff_core.io.datasets.subset`); None: all
    shard : ``"i/n"`` or ``(i, n)``: this process does the images ``j`` with ``j % n == i``
    seed : seeds the subset and the bootstrap
    n_boot : bootstrap resamples for the confidence intervals
    batch_images : images per ``method.ground_batch`` call where the method has one (accelerator
        throughput); results are written after each batch. 1 (default): ``ground`` per image
    info : extra facts recorded in ``run.json`` and the summary (not part of the identity)
    conventions : "paper" (default: the metrics and box handling exactly as the authors'
        evaluation computed them) or "strict"; see :mod:`groundiff_core.conventions`. Part of the
        run's identity and recorded in the summary. (The grounder's own back-projection follows its
        config's ``conventions``.)
    dropped : pairs the loader dropped (no usable box), listed in the summary with their reason;
        default: ``pairs.dropped`` of a loader's :class:`~groundiff_core.io.datasets.common.PairList`

    The summary covers exactly the pairs selected by this call (``n_pairs`` and ``shard``); its
    ``changed`` lists the pairs recomputed because their content key changed since their last row.
    Another process writing ``out_dir`` at the same time is refused (:mod:`groundiff_core.util.fileio`).

    Returns
    -------
    the summary dict written to ``out_dir/summary.json``: ``overall`` and ``class_averaged`` means
    with 95 % intervals per metric (``miou``, ``auc``, ``cnr_abs``, ...), ``per_class``, the skipped
    and dropped pairs, the model, config and versions
    """
    if not callable(getattr(method, "ground", None)):
        raise TypeError(f"{type(method).__name__} has no .ground(image, phrases) method")
    conventions = check_conventions(conventions)
    crop_size = _crop_size(method)
    check_options(n_boot=n_boot, batch_images=batch_images, n_pairs=n_pairs)
    dropped = list(getattr(pairs, "dropped", ()) if dropped is None else dropped)
    pairs = list(pairs)
    ids = [p.pair_id for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("pair ids must be unique within a dataset")
    shard = parse_shard(shard)
    out = out_folder(out_dir)
    identity = run_identity(method, pairs, dataset, shard)
    identity["scoring"] = {"conventions": conventions, "crop_size": crop_size}
    with folder_lock(out, "evaluate"):
        run = open_run(out, identity, method_identity(method), info or {})
        run["dropped"] = jsonable(dropped)
        old_rows = read_jsonl(out / RESULTS, repair=True)
        selected = _shard_images(subset(pairs, n_pairs, seed=seed), shard)
        by_image_all = group_by_image(pairs)
        keys = pair_keys(selected, by_image_all)
        previous = latest(old_rows)
        done = {pid for pid, r in previous.items()
                if r.get("status") == "ok" and r.get("key") == keys.get(pid)}
        changed = [p.pair_id for p in selected if p.pair_id not in done
                   and previous.get(p.pair_id, {}).get("status") == "ok"]
        todo = [(path, grp) for path, grp in group_by_image(selected).items()
                if any(p.pair_id not in done for p in grp)]
        n_todo = sum(p.pair_id not in done for _, grp in todo for p in grp)
        with session(out, run, old_rows, "evaluate", pairs_todo=n_todo, changed=len(changed),
                     pairs_done=0, info=info or {}) as current:
            _run_pairs(method, todo, done, keys, by_image_all, out, current, batch_images,
                       progress and n_todo > 0, identity["method"].get("method", ""),
                       (conventions, crop_size))

        rows = [r for pid, r in latest(read_jsonl(out / RESULTS)).items() if pid in keys]
        stale = len(selected) - sum(r.get("key") == keys[r["pair_id"]] for r in rows)
        if stale:  # cannot happen unless the file was edited while running
            raise RuntimeError(f"{stale} selected pairs have no current row in {out / RESULTS}")
        summary = summarize(rows, n_boot=n_boot, seed=seed)
        summary.update(run_facts(run, identity, shard, n_pairs, len(selected)))
        summary["changed"] = {"n_pairs": len(changed), "pair_ids": changed}
        summary["dropped"] = {"n_pairs": len(dropped), "pairs": dropped}
        write_summary(summary, out)
    _warn_box_notes(rows)
    return summary


def _run_pairs(method: Any, todo: Sequence[tuple[Path, list]], done: set, keys: dict,
               by_image_all: dict, out: Path, current: dict, batch_images: int, progress: bool,
               label: str, scoring: tuple) -> None:
    """Ground the pending pairs of ``todo`` and append their rows (with key and session number)."""
    use_batch = batch_images > 1 and callable(getattr(method, "ground_batch", None))
    step = batch_images if use_batch else 1
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=current["pairs_todo"], unit="pair", desc=f"evaluate {label}",
                   dynamic_ncols=True)
    try:
        with open(out / RESULTS, "a", encoding="utf-8") as fh:
            for c0 in range(0, len(todo), step):
                chunk = [(path, grp, [p for p in grp if p.pair_id not in done])
                         for path, grp in todo[c0:c0 + step]]
                for rows in _evaluate_images(method, chunk, by_image_all, use_batch, *scoring):
                    for row in rows:
                        row.update(key=keys[row["pair_id"]], session=current["n"])
                        fh.write(json.dumps(jsonable(row)) + "\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                        current["pairs_done"] += 1
                    if bar is not None:
                        bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()


def _skip_rows(path: Path, pending: Sequence[GroundingPair], reason: str) -> list[dict]:
    return [{"pair_id": p.pair_id, "status": "skipped", "reason": reason, "image_path": str(path),
             "phrase": p.phrase, "category": p.category} for p in pending]


def _unusable_phrases(method: Any, phrases: Sequence[str]) -> dict[str, str]:
    """The phrases the method's own check refuses (``check_phrases``, e.g. a word its tokenizer cannot
    spell, too many tokens), each with the reason; empty for methods without such a check."""
    check = getattr(method, "check_phrases", None)
    if not callable(check):
        return {}
    bad = {}
    for phrase in phrases:
        try:
            check([phrase])
        except ValueError as e:
            bad[phrase] = str(e)
    return bad


def _crop_size(method: Any) -> int:
    """The input size of the method's model (the centre crop that decides which boxes it can see);
    the paper's 512 for methods without a model (the baselines score the same pairs as the LDM)."""
    model = getattr(method, "model", None)
    size = getattr(model, "input_size", None) or getattr(method, "input_size", None)
    return int(size) if size else PAPER_INPUT_SIZE


def _evaluate_images(method: Any, chunk: Sequence[tuple[Path, list, list]],
                     by_image_all: dict, use_batch: bool, conventions: str = "paper",
                     crop_size: int = PAPER_INPUT_SIZE) -> Iterable[list[dict]]:
    """Rows of the pending pairs of each image of ``chunk`` (one list per image, in order).

    Images that cannot be read give "skipped" rows. Every phrase of an image's selected pairs is
    grounded (not only the pending ones), so a resumed image sees exactly the call of an
    uninterrupted run. With ``use_batch`` the readable images go to ``method.ground_batch`` at once.
    """
    from PIL import Image

    # the project's loaders raise ValueError/OSError; PIL adds DecompressionBombError (a header
    # claiming a huge image) and the odd SyntaxError from a corrupt file
    errors = (OSError, ValueError, ImportError, RuntimeError, MemoryError, SyntaxError,
              Image.DecompressionBombError)
    readable = []
    for path, grp, pending in chunk:
        try:
            image = _load(path)
        except errors as e:
            reason = "missing image file" if isinstance(e, FileNotFoundError) else \
                f"unreadable image ({type(e).__name__}: {e})"
            yield _skip_rows(path, pending, reason)
            continue
        phrases = list(dict.fromkeys(p.phrase for p in grp))
        bad = _unusable_phrases(method, phrases)
        for phrase, why in bad.items():  # one bad phrase never stops the run, nor the image's others
            yield _skip_rows(path, [p for p in pending if p.phrase == phrase], f"phrase cannot be grounded: {why}")
        pending = [p for p in pending if p.phrase not in bad]
        phrases = [ph for ph in phrases if ph not in bad]
        if pending:
            readable.append((path, grp, pending, image, phrases))
    if not readable:
        return
    t0 = time.perf_counter()
    try:
        if use_batch:
            results = method.ground_batch([r[3] for r in readable], [r[4] for r in readable])
        else:
            results = [method.ground(r[3], r[4]) for r in readable]
    except ValueError as e:  # an input the method refuses: image by image, so only the culprit is skipped
        if len(readable) > 1:
            for r in readable:
                yield from _evaluate_images(method, [r[:3]], by_image_all, False, conventions, crop_size)
            return
        yield _skip_rows(readable[0][0], readable[0][2], f"grounding failed: {e}")
        return
    seconds = (time.perf_counter() - t0) / len(readable)
    for (path, grp, pending, image, phrases), result in zip(readable, results):
        maps = np.asarray(getattr(result, "heatmaps", result), dtype=np.float32)
        hw = tuple(int(s) for s in image.shape[:2])
        if maps.shape != (len(phrases), *hw):
            raise ValueError(f"{type(method).__name__}.ground returned heatmaps of shape {maps.shape} "
                             f"for {len(phrases)} phrase(s) on a {hw[0]}x{hw[1]} image; expected "
                             f"{(len(phrases), *hw)} on the original grid")
        index = {ph: k for k, ph in enumerate(phrases)}
        rows = []
        for p in pending:
            row = _pair_row(p, maps[index[p.phrase]], hw, by_image_all[path], conventions, crop_size)
            row["seconds"] = round(seconds / len(phrases), 4)
            row["image_seconds"] = round(seconds, 4)
            rows.append(row)
        yield rows


def _warn_box_notes(rows: Sequence[dict]) -> None:
    noted = [r["pair_id"] for r in rows if r.get("box_notes")]
    if noted:
        warnings.warn(f"{len(noted)} pair(s) had boxes rescaled or clipped to the image read, "
                      f"or dropped outside the model's centre crop "
                      f"(see 'box_notes' in {RESULTS}), e.g. {noted[:3]}", UserWarning, stacklevel=3)
