"""Evaluation runs shipped with the book, and their live re-check.

A full run of the paper preset on the phantom test split costs about 10 s per pair on a CPU, too
much for every build of the book. So the book ships the per-pair rows of one such run
(``book/results/<name>/``: ``results.jsonl``, ``run.json``, ``summary.json`` when the run finished,
and ``ship.json``, written by ``scripts/ship_results.py``) and every build

1. refuses the run if its model fingerprint, grounding configuration or scoring conventions differ
   from what the page loads (:meth:`ShippedRun.check_model`, :meth:`ShippedRun.check_config`);
2. regenerates the phantom split the run read (same command, same seeds) and refuses it unless
   every shipped row's content key (annotation + image file SHA-256) is reproduced
   (:meth:`ShippedRun.check_data`);
3. grounds a seeded handful of the pairs again, live, and refuses the run if any metric of a re-run
   pair differs from its shipped row by more than :data:`TOLERANCE` (:func:`recheck`,
   :func:`compare_rows`).

The summary is groundiff's own :func:`groundiff_core.evaluation.summarize` of the rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["RecheckMismatch", "ShippedRun", "TOLERANCE", "checked_runs", "compare_rows", "load_shipped", "recheck",
           "recheck_markdown", "recheck_selection", "uses_shipped", "compare_presets"]

#: Largest accepted absolute difference between a live re-run pair's metric and its shipped row.
#: Re-grounded single-threaded (:func:`recheck`, as the runs were made), pairs differ by up to
#: 3.9e-7 on the machine that made the run and by at most 4.7e-7 with torch, oneDNN and MKL held to
#: AVX2 (benchmarks/results/portability.md). Anything that changes a heatmap exceeds 1e-6: an Otsu
#: mask that gains or loses a pixel moves mIoU by about 1 / its pixel count, > 1e-4 on these 128 px
#: images. A CPU beyond those can refuse a run that is right: the message names pair and metric.
TOLERANCE = 1e-6


class RecheckMismatch(ValueError):
    """A live re-run disagrees with the shipped rows (the message names pair, metric and values)."""


def uses_shipped(model: Any, dataset_csv: Any, shipped_dir: Any) -> bool:
    """Whether a notebook page reads a shipped run: the phantom model on the phantom test split
    (no ``dataset_csv``) and a ``shipped_dir`` given. Any other model or data runs live."""
    return str(model) == "phantom" and dataset_csv in (None, "", "phantom") and bool(shipped_dir)


@dataclass
class ShippedRun:
    """One shipped evaluation folder: its rows (latest per pair) and provenance."""

    folder: Path
    rows: list[dict]
    run: dict
    ship: dict = field(default_factory=dict)
    summary_file: dict | None = None

    # ------------------------------------------------------------------ provenance
    @property
    def identity(self) -> dict:
        return self.run.get("identity", {})

    @property
    def weights_sha256(self) -> str | None:
        return (self.identity.get("method", {}).get("model") or {}).get("weights_sha256")

    @property
    def config(self) -> dict:
        return self.identity.get("method", {}).get("config") or {}

    @property
    def conventions(self) -> str | None:
        return (self.identity.get("scoring") or {}).get("conventions")

    @property
    def command(self) -> str:
        return (self.run.get("info") or {}).get("command", "?")

    @property
    def date(self) -> str:
        """When the run started (run.json ``created``) and, if it finished, when (summary.json)."""
        end = (self.summary_file or {}).get("finished")
        return f"{self.run.get('created', '?')}" + (f" to {end}" if end else " (unfinished when shipped)")

    @property
    def phantom_images(self) -> int:
        """How many phantom images the run read (ship.json, from ``groundiff phantom --n``)."""
        if not self.ship.get("phantom_images"):
            raise ValueError(f"{self.folder}: ship.json does not say which phantom split the run read "
                             "(ship it with scripts/ship_results.py)")
        return int(self.ship["phantom_images"])

    @property
    def ok_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("status") == "ok"]

    @property
    def machine(self) -> str:
        hosts = {s.get("host") for s in self.run.get("sessions", []) if isinstance(s, dict) and s.get("host")}
        v = (self.summary_file or {}).get("versions") or {}
        extra = ", ".join(f"{k} {v[k]}" for k in ("torch", "platform") if v.get(k))
        return ", ".join(sorted(hosts)) + (f" ({extra})" if extra else "") or "?"

    def pairs_per_class(self) -> dict[str, int]:
        from collections import Counter

        return dict(sorted(Counter(r["category"] for r in self.ok_rows).items()))

    def provenance(self) -> dict:
        """What a page says about the run (for :func:`groundiff_core.book.pages.provenance`)."""
        return {"folder": str(self.folder), "command": self.command, "date": self.date,
                "weights_sha256": self.weights_sha256, "pairs": len(self.ok_rows),
                "conventions": self.conventions, "phantom_command": self.ship.get("phantom_command")}

    # ------------------------------------------------------------------ checks
    def require_pairs(self, minimum: int) -> None:
        """Refuse a run with fewer than ``minimum`` scored pairs (e.g. a partial copy)."""
        if len(self.ok_rows) < int(minimum):
            raise ValueError(f"{self.folder}: {len(self.ok_rows)} scored pairs, fewer than the {minimum} this page "
                             "promises; ship the finished run with scripts/ship_results.py (or lower the "
                             "notebook's minimum parameter for a development build)")

    def check_model(self, ldm: Any) -> None:
        """Refuse if the loaded model's weights fingerprint differs from the run's."""
        from groundiff_core.evaluation.identity import model_content

        if not self.weights_sha256:
            raise ValueError(f"{self.folder}: run.json holds no model weights fingerprint; the rows cannot be "
                             "tied to a model")
        live = model_content(ldm)
        for key in ("weights_sha256", "vocabulary_sha256"):
            want = (self.identity.get("method", {}).get("model") or {}).get(key)
            if want is not None and live.get(key) != want:
                raise ValueError(f"{self.folder}: the shipped run's model {key} is {want}, the loaded model "
                                 f"{getattr(ldm, 'name', '?')!r} has {live.get(key)}: the shipped rows are not "
                                 "this model's")

    def check_config(self, config: Any, conventions: str) -> None:
        """Refuse if the grounding configuration or the scoring conventions differ from the run's."""
        live = config.to_dict() if callable(getattr(config, "to_dict", None)) else dict(config)
        self._refuse_differences("configuration", json.loads(json.dumps(live)), self.config, conventions)

    def check_method(self, method: Any, conventions: str = "paper") -> None:
        """Refuse unless the run was made by ``method`` as the page builds it: for a grounder (a
        method with a ``config``) its configuration and the scoring conventions
        (:meth:`check_config`); for any other method its whole identity (its ``describe()``
        settings, e.g. a Captum method's objective and steps, and the model's fingerprint)."""
        from groundiff_core.evaluation.identity import run_identity

        self.check_model(method.model)
        if getattr(method, "config", None) is not None:
            self.check_config(method.config, conventions)
            return
        self._refuse_differences("method", run_identity(method, [], None, None)["method"],
                                 self.identity.get("method") or {}, conventions)

    def _refuse_differences(self, what: str, live: dict, shipped: dict, conventions: str) -> None:
        """``ValueError`` naming each setting of ``what`` that differs (``live`` is the page's, tuples
        as lists), or the scoring conventions if those differ."""
        diff = sorted(k for k in set(live) | set(shipped) if live.get(k) != shipped.get(k))
        if diff:
            raise ValueError(f"{self.folder}: the shipped run's {what} differs in "
                             + ", ".join(f"{k} (shipped {shipped.get(k)!r}, here {live.get(k)!r})" for k in diff))
        if conventions != self.conventions:
            raise ValueError(f"{self.folder}: the shipped run is scored under the {self.conventions!r} "
                             f"conventions, this page asks for {conventions!r}")

    def restricted(self, pair_ids: Any) -> "ShippedRun":
        """The same run with only the rows of ``pair_ids`` (its finished summary dropped)."""
        keep = set(pair_ids)
        return replace(self, rows=[r for r in self.rows if r["pair_id"] in keep], summary_file=None)

    def check_data(self, pairs: Sequence[Any]) -> None:
        """Refuse unless ``pairs`` (the regenerated phantom split) are the run's data: the same
        number of pairs and, for every shipped row, the same content key (annotation, image bytes
        and the other findings of its image)."""
        from groundiff_core.evaluation.identity import pair_keys
        from groundiff_core.io.datasets import group_by_image

        data = self.identity.get("data") or {}
        if data.get("pairs") is not None and data["pairs"] != len(pairs):
            raise ValueError(f"{self.folder}: the run read {data['pairs']} pairs, the regenerated split has {len(pairs)}")
        keys = pair_keys(list(pairs), group_by_image(list(pairs)))
        by_id = {p.pair_id: p for p in pairs}
        for r in self.rows:
            if keys.get(r["pair_id"]) != r.get("key"):
                p = by_id.get(r["pair_id"])
                same_annotation = p is not None and (p.phrase, p.category, p.boxes.tolist()) == (
                    r.get("phrase"), r.get("category"), r.get("boxes"))
                if same_annotation:
                    from groundiff_core.util.environment import hardware

                    made_on = ((self.summary_file or {}).get("hardware") or {}).get("cpu", "an unrecorded CPU")
                    why = (" Its annotation is the same, so its image file (or its image's other findings) "
                           f"differ; the run was made on {made_on!r}, this machine is "
                           f"{hardware(import_torch=False).get('cpu')!r}. The generator draws in float64 so that "
                           "a seed gives the same bytes on every CPU (tests/test_phantom_generator.py); another "
                           "numpy, scipy or Pillow, or a run shipped before 2026-12-04, can still differ. "
                           "Pass -p shipped_run \"\" to compute the page live.")
                else:
                    why = ""
                raise ValueError(f"{self.folder}: pair {r['pair_id']!r} is not reproduced by the regenerated "
                                 f"phantom split (shipped key {r.get('key')}, regenerated {keys.get(r['pair_id'])})."
                                 + why)

    def phantom_pairs(self, folder: str | os.PathLike) -> list:
        """Regenerate the phantom split the run read into ``folder`` (a few seconds) and return its
        pairs, after :meth:`check_data`."""
        from groundiff_core.io.datasets import load_dataset
        from groundiff_core.phantom.generator import write_phantom_set

        csv = write_phantom_set(folder, self.phantom_images, split=self.ship.get("phantom_split", "test"),
                                progress=False)
        pairs = load_dataset("phantom", csv)
        self.check_data(pairs)
        return pairs

    def recheck_selection(self, pairs: Sequence[Any], n: int, seed: int = 0) -> list:
        """:func:`recheck_selection` among the images of ``pairs`` whose every pair the run has a row
        for (a partial or subset run may lack some)."""
        have = {r["pair_id"] for r in self.rows}
        missing = {p.image_path for p in pairs if p.pair_id not in have}
        return recheck_selection([p for p in pairs if p.image_path not in missing], n, seed)

    def summarize(self, *, n_boot: int = 1000, seed: int = 0, conventions: str | None = None) -> dict:
        """groundiff's summary of the shipped rows, with the run's identity and config attached."""
        from groundiff_core.evaluation import summarize

        s = summarize(self.rows, n_boot=n_boot, seed=seed, conventions=conventions)
        s.update(identity=self.identity, config=self.config, shipped=self.provenance())
        return s


def load_shipped(folder: str | os.PathLike) -> ShippedRun:
    """Read a shipped run folder (``results.jsonl`` and ``run.json`` required)."""
    from groundiff_core.evaluation import load_results

    folder = Path(folder)
    for name in ("results.jsonl", "run.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"shipped run {folder}: {name} is missing (ship a run with scripts/ship_results.py)")
    rows = load_results(folder)
    if not rows:
        raise ValueError(f"shipped run {folder}: results.jsonl has no rows")
    run = json.loads((folder / "run.json").read_text())
    ship = json.loads((folder / "ship.json").read_text()) if (folder / "ship.json").is_file() else {}
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else None
    return ShippedRun(folder=folder, rows=rows, run=run, ship=ship, summary_file=summary)


def checked_runs(runs: Mapping[str, ShippedRun], methods: Mapping[str, Any], pairs: Sequence[Any], *,
                 min_pairs: int, conventions: str = "paper") -> dict[str, ShippedRun]:
    """Several shipped runs read side by side (one per method of a page): each refused unless it
    has ``min_pairs`` scored pairs, was made by its method as the page builds it
    (:meth:`ShippedRun.check_method`; ``methods`` maps the same names to the live methods, unwrapped)
    and read ``pairs`` (:meth:`ShippedRun.check_data`); then all are restricted to the pairs every one
    of them scored, so that every row of the page's table stands on the same pairs."""
    missing = sorted(set(runs) ^ set(methods))
    if missing:
        raise ValueError(f"shipped runs and methods do not match: {missing}")
    for name, run in runs.items():
        run.require_pairs(min_pairs)
        run.check_method(methods[name], conventions)
        run.check_data(pairs)
    common = set.intersection(*({r["pair_id"] for r in run.ok_rows} for run in runs.values()))
    if len(common) < int(min_pairs):
        raise ValueError(f"the shipped runs {sorted(runs)} share {len(common)} scored pairs, fewer than the "
                         f"{min_pairs} the page promises")
    return {name: run.restricted(common) for name, run in runs.items()}


def recheck_selection(pairs: Sequence[Any], n: int, seed: int = 0) -> list:
    """The pairs a live re-check grounds: the images of the first pairs of the seeded
    :func:`~groundiff_core.io.datasets.subset`, whole (every phrase of an image comes from the same
    inversion), added until at least ``n`` pairs are covered; in dataset order."""
    from groundiff_core.io.datasets import subset

    n = int(n)
    if n < 1:
        raise ValueError(f"the re-check needs at least 1 pair, got {n}")
    pairs = list(pairs)
    for k in range(1, len(pairs) + 1):
        images = {p.image_path for p in subset(pairs, k, seed=seed)}
        chosen = [p for p in pairs if p.image_path in images]
        if len(chosen) >= n:
            return chosen
    return pairs


def compare_rows(shipped: Sequence[dict], live: Sequence[dict], *, tolerance: float = TOLERANCE,
                 metrics: Sequence[str] | None = None) -> dict:
    """Compare live re-run rows with the shipped rows of the same ``pair_id``.

    Returns ``{"pairs", "max_abs_diff": {metric: value}, "tolerance"}``. Raises
    :class:`RecheckMismatch` naming the pair, the metric, both values and the tolerance when a
    difference exceeds ``tolerance``, when one side has a value and the other none, when a pair's
    status or content key differs, or when a live pair has no shipped row.
    """
    from groundiff_core.evaluation import METRICS

    metrics = list(metrics or METRICS)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    by_id = {r["pair_id"]: r for r in shipped}
    worst = {m: 0.0 for m in metrics}
    for r in live:
        pid = r["pair_id"]
        if pid not in by_id:
            raise RecheckMismatch(f"re-run pair {pid!r} has no shipped row")
        s = by_id[pid]
        for what in ("status", "key"):
            if s.get(what) != r.get(what):
                raise RecheckMismatch(f"pair {pid!r}: {what} shipped {s.get(what)!r}, re-run {r.get(what)!r}")
        for m in metrics:
            a, b = s.get(m), r.get(m)
            if a is None and b is None:
                continue
            if a is None or b is None or abs(float(a) - float(b)) > tolerance:
                raise RecheckMismatch(f"pair {pid!r}, metric {m}: shipped {a!r}, re-run {b!r}, "
                                      f"tolerance {tolerance:g}")
            worst[m] = max(worst[m], abs(float(a) - float(b)))
    return {"pairs": len(live), "max_abs_diff": worst, "tolerance": tolerance}


def recheck(run: ShippedRun, method: Any, pairs: Sequence[Any], out_dir: str | os.PathLike, *,
            n: int, seed: int = 0, tolerance: float = TOLERANCE, batch_images: int = 1) -> dict:
    """Ground :meth:`ShippedRun.recheck_selection` of ``pairs`` live with ``method`` (evaluation folder
    ``out_dir``, emptied first so that nothing is resumed; torch single-threaded meanwhile) and
    :func:`compare_rows` them with the shipped rows; ``batch_images`` images per ``ground_batch`` call
    (on CPU batching gives the same maps to the bit, tests/test_engine_batching.py). Returns the
    comparison with ``images``, ``pair_ids`` and the live ``seconds_per_pair`` added."""
    import torch

    from groundiff_core.evaluation import evaluate, load_results

    chosen = run.recheck_selection(pairs, n, seed)
    out_dir = Path(out_dir)
    for name in ("results.jsonl", "run.json", "summary.json", "summary.csv"):  # never resume: ground anew
        (out_dir / name).unlink(missing_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the shipped runs were made: the same floating-point reduction order
    try:
        summary = evaluate(method, chosen, out_dir, dataset={"name": "phantom", "recheck_of": run.folder.name},
                           progress=False, n_boot=10, seed=seed, conventions=run.conventions or "paper",
                           batch_images=batch_images)
    finally:
        torch.set_num_threads(threads)
    ids = {p.pair_id for p in chosen}
    live = [r for r in load_results(out_dir) if r["pair_id"] in ids]
    report = compare_rows(run.rows, live, tolerance=tolerance)
    report.update(images=len({p.image_path for p in chosen}), pair_ids=sorted(ids),
                  seconds_per_pair=summary.get("seconds_per_pair"))
    return report


def recheck_markdown(report: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """One paragraph stating the re-check's result."""
    names = names or {}
    diffs = ", ".join(f"{names.get(m, m)} {v:.1e}" for m, v in report["max_abs_diff"].items())
    images = f"{report['images']} image{'' if report['images'] == 1 else 's'}"
    return (f"**Live re-check passed**: {report['pairs']} pairs ({images}, seeded) grounded "
            f"again now and compared with their shipped rows; largest absolute difference per metric: "
            f"{diffs} (tolerance {report['tolerance']:g}).")


def compare_presets(a: ShippedRun, b: ShippedRun, metrics: Sequence[str], *, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    """Run ``b`` against run ``a`` on the pairs both scored: per metric the class-averaged mean of
    each with a 95% bootstrap interval and the paired difference ``b - a`` with a paired bootstrap
    interval (:mod:`groundiff_core.evaluation.compare`), and the mean ``seconds`` per pair of each run on
    those pairs.

    Returns ``{"n_pairs", "per_class", "metrics": {m: {"a", "b", "difference"}}, "seconds": {"a", "b"}}``.
    """
    import pandas as pd

    from groundiff_core.evaluation.compare import class_averaged_ci, paired_difference

    frames = {}
    for key, run in (("a", a), ("b", b)):
        df = pd.DataFrame(run.ok_rows)
        frames[key] = df[["pair_id", "category", "seconds", *metrics]]
    common = sorted(set(frames["a"]["pair_id"]) & set(frames["b"]["pair_id"]))
    for key in frames:
        frames[key] = frames[key][frames[key]["pair_id"].isin(common)].sort_values("pair_id").reset_index(drop=True)
    out: dict[str, Any] = {"n_pairs": len(common),
                           "per_class": frames["a"]["category"].value_counts().sort_index().to_dict(),
                           "metrics": {}, "seconds": {}}
    for m in metrics:
        out["metrics"][m] = {key: class_averaged_ci(frames[key], m, n_boot=n_boot, seed=seed) for key in frames}
        out["metrics"][m]["difference"] = paired_difference(frames["b"], frames["a"], m, n_boot=n_boot, seed=seed)
    for key in frames:
        secs = frames[key]["seconds"].dropna()
        out["seconds"][key] = float(secs.mean()) if len(secs) else None
    return out
