"""The two sets of evaluation conventions: the paper's (default) and a stricter alternative.

Every number groundiff produces depends on a few conventions that the paper's Algorithm 1 leaves
open. ``"paper"`` reproduces, exactly, what the authors' evaluation computed (``METHOD.md``, section
"Metrics, exactly as the authors' evaluation computed them"); ``"strict"`` is a cleaner reading
that this project used before. They differ in these places, and nowhere else:

=====================  ===========================================  =========================================
step                   ``"paper"`` (default)                        ``"strict"``
=====================  ===========================================  =========================================
resize (forward)       longer side ``int(S * long / short)``        longer side ``round(S * long / short)``
                       (truncated)
back-projection        nearest resize to the shorter side, NaN      exact inverse of the crop: the kept
                       pad ``floor(m/2)`` before and ``ceil(m/2)``  region's offset is the crop offset
                       after (``m`` = long - short): not the exact  mapped back to original pixels
                       inverse, a few pixels off on most sizes
Otsu                   ``threshold_multiotsu(classes=2)``           ``threshold_otsu``
mIoU ground truth      the full boxes, margin pixels included       valid (non-NaN) pixels only
                       (a box reaching into the margin lowers IoU)
CNR                    per box on a running copy: each box is       each box against every other valid
                       blanked after it is scored, so later boxes'  pixel, independently
                       "out" excludes earlier boxes
undefined values       a degenerate AUC is 0.5, a NaN CNR or an     ``NaN`` (left out of the means and
                       empty IoU union is 0 (they enter the class   counted as undefined)
                       means, as in the authors' tables)
binned AUC             torcheval's ``binary_binned_auroc``: the     torchmetrics-style: no (0, 0) anchor,
                       ROC starts at (0, 0) and is normalised by    normalised by the counts of valid
                       the counts at the lowest threshold           positives and negatives
boxes after the crop   a box with no pixel inside the model's       kept (the metrics ignore its invisible
                       crop is dropped; a pair left with none is    part; a pair whose GT has no valid
                       skipped                                      pixel scores NaN)
=====================  ===========================================  =========================================

The strict variant answers "how well does the map find the part of the finding the model saw";
the paper variant answers "what would the authors' evaluation have printed". Both are pure
functions of the same heatmaps; the book's main table shows both side by side.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CONVENTIONS", "Conventions", "check_conventions"]

#: The accepted values, the default first.
CONVENTIONS: tuple[str, ...] = ("paper", "strict")
Conventions = Literal["paper", "strict"]


def check_conventions(value: object) -> str:
    """Return ``value`` if it names a set of conventions, else raise a ValueError that lists them."""
    if not isinstance(value, str) or value not in CONVENTIONS:
        raise ValueError(f"conventions must be one of {', '.join(repr(c) for c in CONVENTIONS)}, "
                         f"got {value!r}")
    return value
