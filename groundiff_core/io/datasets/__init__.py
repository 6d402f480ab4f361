"""Grounding datasets: annotation CSVs -> :class:`GroundingPair` lists (images are read later).

* :func:`load_mscxr` - MS-CXR (v1.0.0/v1.1.0) on MIMIC-CXR-JPG; also the phantom sets, which are
  written in the MS-CXR layout;
* :func:`load_vindr` - VinDr-CXR box annotations;
* :func:`load_nih` - NIH ChestX-ray14 ``BBox_List_2017.csv``.

:func:`load_dataset` picks one by name, as the ``groundiff evaluate --dataset`` option does.
"""

from __future__ import annotations

import os
from pathlib import Path

from groundiff_core.io.datasets.common import GroundingPair, group_by_image, subset
from groundiff_core.io.datasets.mscxr import load_mscxr
from groundiff_core.io.datasets.nih import load_nih
from groundiff_core.io.datasets.vindr import load_vindr

__all__ = ["GroundingPair", "DATASETS", "load_dataset", "load_mscxr", "load_vindr", "load_nih",
           "group_by_image", "subset"]

#: Names understood by :func:`load_dataset`.
DATASETS = ("mscxr", "vindr", "nih", "phantom")


def load_dataset(name: str, csv: str | os.PathLike, images: str | os.PathLike | None = None,
                 split: str | None = None) -> list[GroundingPair]:
    """Load dataset ``name`` (one of :data:`DATASETS`) from its annotation CSV.

    ``images`` is the image root; for ``phantom`` it defaults to the CSV's folder (the phantom
    generator writes paths relative to it). ``split`` filters MS-CXR v1.1.0 / phantom CSVs only.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    if images is None:
        if name != "phantom":
            raise ValueError(f"dataset {name!r} needs the image root (--images)")
        images = Path(csv).parent
    if split is not None and name in ("vindr", "nih"):
        raise ValueError(f"--split applies to MS-CXR-layout CSVs only, not {name!r} "
                         "(pass the split's own annotation file instead)")
    if name in ("mscxr", "phantom"):
        return load_mscxr(csv, images, split=split)
    if name == "vindr":
        return load_vindr(csv, images)
    return load_nih(csv, images)
