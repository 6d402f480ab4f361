"""Which pairs a notebook runs on: a dataset named by the ``parameters`` cell, resolved to pairs.

A notebook names a dataset either as a CSV (MS-CXR layout, VinDr-CXR or NIH, with an image root)
or, by default, as ``None``/``"phantom"``: then the phantom test split (seeds never used in
training) is generated into the notebook's output folder, so the book runs offline anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PHANTOM_TEST_IMAGES", "BookData", "load_book_data"]

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
    from groundiff_core.io.datasets import load_dataset, subset

    n = None if not n_pairs else int(n_pairs)
    if n is not None and n < 0:
        raise ValueError(f"n_pairs must be >= 0 (0 = all pairs), got {n_pairs}")
    if dataset_csv in (None, "", "phantom"):
        from groundiff_core.phantom.generator import SPLIT_SEEDS, write_phantom_set

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
