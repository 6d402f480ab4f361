"""Data plumbing shared by the book's notebooks: their common setup (:func:`setup_notebook`), which
pairs a notebook runs on, and where its results go. Keeps the notebooks to narrative and plots.

A notebook's ``parameters`` cell names a dataset either as a CSV (MS-CXR layout, VinDr-CXR or NIH,
with an image root) or, by default, as ``None``/``"phantom"``: then the phantom test split
(seeds never used in training) is generated into the notebook's output folder, so the book runs
offline anywhere.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import LDM

__all__ = ["BookData", "KeepMaps", "load_book_data", "save_json", "setup_notebook", "side_of_phrase"]

PHANTOM_TEST_IMAGES = 200  # ~2 findings per image: about 400 image-phrase pairs


@dataclass
class BookData:
    """The pairs a notebook evaluates and where they came from.

    ``pairs`` is the whole dataset (the evaluation runner also uses the other pairs of an image,
    for the text-sensitivity check); ``selected`` the seeded subset of ``n_pairs`` of them.
    """

    pairs: list
    selected: list
    description: dict = field(default_factory=dict)

    @property
    def is_phantom(self) -> bool:
        return self.description.get("name") == "phantom"


def load_book_data(dataset_csv: str | os.PathLike | None, images_root: str | os.PathLike | None,
                   output_dir: str | os.PathLike, *, n_pairs: int | None, seed: int = 0,
                   dataset: str = "mscxr", split: str | None = None,
                   phantom_images: int = PHANTOM_TEST_IMAGES) -> BookData:
    """Resolve a notebook's dataset parameters to pairs.

    Parameters
    ----------
    dataset_csv : the annotation CSV, or ``None``/``""``/``"phantom"`` for the phantom test split
        generated into ``output_dir/phantom_test`` (``phantom_images`` images)
    images_root : image folder of a real dataset (ignored for the phantom)
    n_pairs : how many pairs to select (seeded, nested in larger ``n_pairs``); ``None`` or ``0``:
        all of them
    dataset : ``"mscxr"`` (also any CSV in its layout), ``"vindr"`` or ``"nih"``
    split : the MS-CXR v1.1.0 ``split`` to keep (e.g. ``"test"``), if any
    """
    from .datasets import load_dataset, subset

    n = None if not n_pairs else int(n_pairs)
    if n is not None and n < 0:
        raise ValueError(f"n_pairs must be >= 0 (0 = all pairs), got {n_pairs}")
    if dataset_csv in (None, "", "phantom"):
        from .phantom.generator import SPLIT_SEEDS, write_phantom_set

        if int(phantom_images) < 1:
            raise ValueError(f"phantom_images must be >= 1, got {phantom_images}")
        csv = write_phantom_set(Path(output_dir) / "phantom_test", int(phantom_images), split="test",
                                progress=False)
        pairs = load_dataset("phantom", csv)
        desc = {"name": "phantom", "split": "test", "images": int(phantom_images),
                "first_seed": SPLIT_SEEDS["test"]}
    else:
        csv = Path(dataset_csv)
        if not csv.is_file():
            raise FileNotFoundError(f"dataset_csv {csv} does not exist (give an annotation CSV, or None "
                                    "for the phantom test set)")
        if images_root is None:
            raise ValueError(f"dataset_csv {csv} needs images_root (the folder its image paths are under)")
        pairs = load_dataset(dataset, csv, images_root, split=split)
        desc = {"name": dataset, "csv": csv.name, "split": split}
    if not pairs:
        raise ValueError(f"the dataset has no image-phrase pairs ({desc})")
    selected = subset(pairs, n, seed=seed)
    desc.update(pairs=len(pairs), selected=len(selected), selection_seed=seed)
    return BookData(pairs=pairs, selected=selected, description=desc)


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

    from .loading import load_model

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


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(obj: Any, output_dir: str | os.PathLike, name: str) -> Path:
    """Write ``obj`` as ``output_dir/name.json`` (NaN -> null, numpy scalars -> numbers)."""
    path = Path(output_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(obj), indent=2, default=str) + "\n")
    return path


def side_of_phrase(phrase: str) -> str:
    """The laterality a phrase states: ``"right"``, ``"left"``, ``"bilateral"`` or ``"none"``
    (words "right"/"left"/"bilateral"/"bibasilar"; both sides named -> "bilateral")."""
    words = set(phrase.lower().replace(",", " ").split())
    if words & {"bilateral", "bibasilar", "bibasal"} or {"right", "left"} <= words:
        return "bilateral"
    if "right" in words:
        return "right"
    if "left" in words:
        return "left"
    return "none"


class KeepMaps:
    """Wrap a grounding method so that the heatmaps it returns are kept for plotting.

    ``KeepMaps(method).ground(image, phrases)`` returns what ``method`` returns and stores each
    phrase's ``[H, W]`` map under ``(image digest, phrase)``; :meth:`get` finds it again from the
    image and phrase. The evaluation runner sees the wrapped method's identity unchanged.
    """

    def __init__(self, method: Any):
        self.method = method
        self.maps: dict[tuple[int, str], Any] = {}

    @staticmethod
    def _digest(image: Any) -> int:
        import zlib

        import numpy as np

        from .image_io import load_image

        a = np.ascontiguousarray(load_image(image))
        return zlib.crc32(a.tobytes()) ^ (a.shape[0] << 16) ^ a.shape[1]

    def ground(self, image: Any, phrases: Any):
        result = self.method.ground(image, phrases)
        key = self._digest(image)
        for phrase, hm in zip(result.phrases, result.heatmaps):
            self.maps[(key, phrase)] = hm
        return result

    def get(self, image: Any, phrase: str):
        """The kept ``[H, W]`` heatmap of ``phrase`` on ``image`` (KeyError if never grounded)."""
        return self.maps[(self._digest(image), phrase)]

    def describe(self) -> dict:
        from .evaluate import method_identity

        return method_identity(self.method)

    def __getattr__(self, name: str):  # model, config, name ... of the wrapped method
        if name == "method":
            raise AttributeError(name)
        return getattr(self.method, name)
