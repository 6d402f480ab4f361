"""Data plumbing shared by the book's notebooks: their common setup (:func:`setup_notebook`), which
pairs a notebook runs on (:mod:`groundiff_core.book.data`), and where its results go. Keeps the
notebooks to narrative and plots.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from groundiff_core.book.data import PHANTOM_TEST_IMAGES, BookData, load_book_data
from groundiff_core.util.fileio import write_json

if TYPE_CHECKING:
    import numpy as np

    from groundiff_core.models.ldm import LDM

__all__ = ["BookData", "KeepMaps", "load_book_data", "nested_count", "inversion_cache", "one_pair_per_class",
           "phrase_prior", "reference_table", "resolve_show_images", "save_json", "scorable_pairs",
           "setup_notebook", "swap_sides", "unrelated_finding"]

def setup_notebook(output_dir: str | os.PathLike, *, seed: int, model: str | os.PathLike,
                   device: Any = None, dtype: Any = None, text_encoder: str | os.PathLike | None = None,
                   dataset_csv: str | os.PathLike | None = None, images_root: str | os.PathLike | None = None,
                   n_pairs: int | None, dataset: str = "mscxr", split: str | None = None,
                   phantom_images: int = PHANTOM_TEST_IMAGES,
                   display_precision: int | None = 3) -> tuple[Path, BookData, "LDM"]:
    """The common first steps of a notebook, from its ``parameters`` cell: ``(out, data, ldm)``.

    In order: seeds torch's global generator with ``seed``; creates ``output_dir`` (``out``);
    sets pandas' ``display.precision`` to ``display_precision`` (``None`` leaves it alone); resolves
    the dataset parameters with :func:`load_book_data` (``data``, the phantom written under
    ``out``); loads ``model`` with :func:`groundiff_core.load_model` on ``device``/``dtype``
    (``ldm``).
    """
    import torch

    from groundiff_core.models.loading import load_model

    torch.manual_seed(seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if display_precision is not None:
        import pandas as pd

        pd.set_option("display.precision", display_precision)
    data = load_book_data(dataset_csv, images_root, out, n_pairs=n_pairs, seed=seed, dataset=dataset,
                          split=split, phantom_images=phantom_images)
    ldm = load_model(model, device=device, dtype=dtype, text_encoder=text_encoder)
    return out, data, ldm


def inversion_cache(folder: str | os.PathLike | None):
    """The book's shared inversion cache from a notebook's ``inversion_cache`` parameter (None: no
    cache): the notebooks of one build that ground the same images with the same model and steps
    invert each image once (:class:`groundiff_core.engine.kept.InversionCache`)."""
    if not folder:
        return None
    from groundiff_core.engine.kept import InversionCache

    return InversionCache(folder)


def phrase_prior(data: BookData, *, seed: int = 0, folds: int = 5):
    """The image-blind phrase prior a page compares with: on the phantom, the one fitted on training
    phantoms (:func:`groundiff_core.phantom.prior.phantom_prior`); on any other dataset, cross-fitted
    on its own pairs in ``folds`` folds grouped by image, so no pair is scored by a prior that saw its
    image (:class:`groundiff_core.methods.prior.CrossFittedPrior`)."""
    if data.is_phantom:
        from groundiff_core.phantom.prior import phantom_prior

        return phantom_prior()
    from groundiff_core.methods.prior import CrossFittedPrior

    return CrossFittedPrior.fit(data.pairs, folds=folds, seed=seed)


def save_json(obj: Any, output_dir: str | os.PathLike, name: str) -> Path:
    """Write ``obj`` as ``output_dir/name.json`` (NaN -> null, numpy scalars -> numbers)."""
    return write_json(Path(output_dir) / f"{name}.json", obj)


def nested_count(wanted: int | None, n_pairs: int | None) -> int | None:
    """How many pairs a costly method gets inside a run on ``n_pairs`` (``0``/``None`` = all):
    ``wanted`` capped at ``n_pairs``; ``None`` means all pairs only when ``wanted`` is 0 too.

    ``nested_count(20, 0) == 20`` (all pairs for the cheap methods, 20 for the costly one),
    ``nested_count(20, 8) == 8``, ``nested_count(0, 8) == 8``, ``nested_count(0, 0) is None``.
    """
    for name, v in (("pairs", wanted), ("n_pairs", n_pairs)):
        if v is not None and int(v) < 0:
            raise ValueError(f"{name} must be >= 0 (0 = all pairs), got {v}")
    w, n = int(wanted or 0), int(n_pairs or 0)
    if w and n:
        return min(w, n)
    return (w or n) or None


_METRIC_ALIASES = {"miou": "miou", "mean iou": "miou", "auc": "auc", "auc-roc": "auc", "auroc": "auc",
                   "auc_roc": "auc", "cnr": "cnr_abs", "cnr_abs": "cnr_abs", "|cnr|": "cnr_abs",
                   "cnr_signed": "cnr_signed", "cnr (signed)": "cnr_signed"}


def reference_table(summary: dict, reference_csv: str | os.PathLike, *, label: str = "this run"):
    """Published figures beside a run's: a DataFrame indexed by (class, metric), one column for the
    run (``summary``: an :func:`groundiff_core.evaluation.runner.evaluate` summary) and one per method of the
    CSV.

    ``reference_csv`` has the columns ``method,class,metric,value`` (the book's own,
    ``book/published.csv``, also ``label``, ``source``, ``table``, ``protocol``: each method's column is
    then named ``method (label)``, so one method from two sources stays two columns). ``class`` is a
    finding's name in any case, or ``average`` for the class average; ``metric`` one of ``miou``,
    ``auc``, ``cnr`` (absolute, as the paper's code; also ``mIoU``, ``AUC-ROC``, ``|CNR|``) or
    ``cnr_signed``.
    Rows of classes the run has no pairs of show an empty cell for the run. An unknown metric or a
    missing column is a ``ValueError``.
    """
    import pandas as pd

    ref = pd.read_csv(reference_csv)
    missing = {"method", "class", "metric", "value"} - set(ref.columns)
    if missing:
        raise ValueError(f"{reference_csv}: missing column(s) {sorted(missing)}; expected method,class,metric,value")
    metric = ref["metric"].astype(str).str.strip().str.lower().map(_METRIC_ALIASES)
    if metric.isna().any():
        bad = sorted(set(ref.loc[metric.isna(), "metric"].astype(str)))
        raise ValueError(f"{reference_csv}: unknown metric(s) {bad}; use miou, auc, cnr or cnr_signed")
    ref = ref.assign(metric=metric, key=ref["class"].map(_norm_category))
    if "label" in ref.columns:
        ref["method"] = [f"{m} ({lab})" for m, lab in zip(ref["method"], ref["label"])]
    ours_by_key = {_norm_category(c): (c, st) for c, st in summary.get("per_class", {}).items()}
    ours_by_key["average"] = ("class average", summary.get("class_averaged", {}))
    names = {k: v[0] for k, v in ours_by_key.items()}
    ref["class"] = [names.get(k, c) for k, c in zip(ref["key"], ref["class"])]
    table = ref.pivot_table(index=["class", "metric"], columns="method", values="value", aggfunc="first")
    ours = []
    for cls, m in table.index:
        st = ours_by_key.get(_norm_category(cls) if cls != "class average" else "average", (None, {}))[1]
        ours.append((st.get(m) or {}).get("mean"))
    table.insert(0, label, ours)
    table.columns.name = None
    return table


def scorable_pairs(pairs: Sequence[Any], *, conventions: str = "paper", crop_size: int | None = None) -> list:
    """The pairs of ``pairs`` that the evaluation runner scores: those left with a box after
    :func:`groundiff_core.evaluation.boxes.scored_boxes` on the image as read (each image's size is read once, from its file)."""
    from groundiff_core.evaluation.boxes import scored_boxes
    from groundiff_core.evaluation.runner import PAPER_INPUT_SIZE
    from groundiff_core.io.images import load_image

    crop_size = int(crop_size or PAPER_INPUT_SIZE)
    sizes: dict = {}
    keep = []
    for p in pairs:
        if p.image_path not in sizes:
            sizes[p.image_path] = load_image(p.image_path).shape
        if len(scored_boxes(p, sizes[p.image_path], crop_size, conventions)[0]):
            keep.append(p)
    return keep


def one_pair_per_class(pairs: Sequence[Any], *, conventions: str = "paper", crop_size: int | None = None,
                       classes: int | None = None) -> list:
    """The first scorable pair (:func:`scorable_pairs`) of each class, classes in sorted order,
    at most ``classes`` of them (``None``: all): the examples of a qualitative figure."""
    chosen: dict[str, Any] = {}
    for p in pairs:
        key = _norm_category(p.category)
        if key in chosen or (classes is not None and len(chosen) >= classes and key not in chosen):
            continue
        if scorable_pairs([p], conventions=conventions, crop_size=crop_size):
            chosen[key] = p
    return [chosen[k] for k in sorted(chosen)]


def _norm_category(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def unrelated_finding(category: str, candidates: Sequence[str] = ("cardiomegaly", "pneumothorax",
                                                                  "pleural effusion")) -> str:
    """The first of ``candidates`` that is not the finding ``category``, compared without case,
    underscores or extra spaces ("Pleural Effusion" is "pleural effusion"), returned lower-case.

    Raises ``ValueError`` when every candidate is the category itself.
    """
    own = _norm_category(category)
    for c in candidates:
        if _norm_category(c) != own:
            return _norm_category(c)
    raise ValueError(f"no candidate other than {category!r} in {list(candidates)}")


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_sides(text: str) -> str:
    """``text`` with the words "left" and "right" exchanged, whatever their case or the punctuation
    around them ("Left basilar opacity." -> "Right basilar opacity."); the case of each word is
    kept (Left -> Right, LEFT -> RIGHT, left -> right). Unchanged when neither word occurs."""
    def repl(m: "re.Match[str]") -> str:
        w = m.group(0)
        other = "right" if w.lower() == "left" else "left"
        if w.isupper():
            return other.upper()
        if w[0].isupper():
            return other.capitalize()
        return other

    return _SIDE.sub(repl, text)


def resolve_show_images(show_images: Any, data: "BookData") -> bool:
    """Whether a notebook may draw the dataset's images: ``show_images`` if it is a yes/no, and
    for ``None`` (the notebooks' default) only on the phantom. Real chest X-rays (MIMIC-CXR under
    the PhysioNet data-use agreement) stay out of a page that may be published unless asked for."""
    if show_images is None:
        return data.is_phantom
    from groundiff_core.engine.config import parse_bool

    return parse_bool(show_images, "show_images")


class KeepMaps:
    """Wrap a grounding method so that the heatmaps it returns are kept for plotting.

    ``KeepMaps(method).ground(image, phrases)`` returns what ``method`` returns and stores each
    phrase's ``[H, W]`` map under ``(image digest, phrase)`` (only the maps of ``phrases`` when
    given); :meth:`get` finds it again from the
    image and phrase. The evaluation runner sees the wrapped method's identity unchanged.
    """

    def __init__(self, method: Any, phrases: Sequence[str] | None = None):
        self.method = method
        self.maps: dict[tuple[int, str], Any] = {}
        # keep only these phrases' maps (None: all), so a run over many full-size images stays small
        self.phrases = None if phrases is None else set(phrases)

    @staticmethod
    def _digest(image: Any) -> int:
        import zlib

        import numpy as np

        from groundiff_core.io.images import load_image

        a = np.ascontiguousarray(load_image(image))
        return zlib.crc32(a.tobytes()) ^ (a.shape[0] << 16) ^ a.shape[1]

    def _keep(self, image: Any, result: Any) -> Any:
        key = self._digest(image)
        for phrase, hm in zip(result.phrases, result.heatmaps):
            if self.phrases is None or phrase in self.phrases:
                self.maps[(key, phrase)] = hm
        return result

    def ground(self, image: Any, phrases: Any):
        return self._keep(image, self.method.ground(image, phrases))

    def ground_batch(self, images: Sequence[Any], phrases_per_image: Sequence[Any]) -> list:
        """The wrapped method's ``ground_batch`` (one ``ground`` per image where it has none)."""
        inner = getattr(self.method, "ground_batch", None)
        results = inner(images, phrases_per_image) if callable(inner) else \
            [self.method.ground(im, ph) for im, ph in zip(images, phrases_per_image)]
        return [self._keep(im, r) for im, r in zip(images, results)]

    def __getattr__(self, name: str):  # model, config, name ... of the wrapped method
        if name == "method":
            raise AttributeError(name)
        return getattr(self.method, name)

    def get(self, image: Any, phrase: str):
        """The kept ``[H, W]`` heatmap of ``phrase`` on ``image`` (KeyError if never grounded)."""
        return self.maps[(self._digest(image), phrase)]

    def get_or_ground(self, image: Any, phrase: str):
        """:meth:`get`, grounding ``phrase`` on ``image`` now when it was not (a page that reads a
        shipped run draws a few of its pairs: those are grounded live, the rest never)."""
        try:
            return self.get(image, phrase)
        except KeyError:
            return self.ground(image, [phrase]).heatmaps[0]

    def describe(self) -> dict:
        from groundiff_core.evaluation import method_identity

        return method_identity(self.method)
