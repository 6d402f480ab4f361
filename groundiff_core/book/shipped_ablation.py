"""The shipped L/T ablation (``book/results/phantom-ablation``): read, checked against the page, re-checked live.

Made by ``scripts/ship_ablation.py`` (:func:`~groundiff_core.evaluation.ablation.run_ablation` on
whole images of the phantom test split, single-threaded). The book's full build reads it instead of
recording a few pairs live: :func:`load` reads it, :meth:`ShippedAblation.check` refuses it unless its
identity (grounder and the weights' fingerprint, settings, window, the pairs' content) is exactly
what this page would compute, and :meth:`ShippedAblation.recheck` computes a few of its images again
(single-threaded, as it was made) and compares every row to :data:`~groundiff_core.book.shipped.TOLERANCE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from groundiff_core.book.shipped import TOLERANCE, RecheckMismatch, recheck_selection

__all__ = ["ShippedAblation", "load", "METRICS"]

METRICS = ("miou", "auc", "auc_binned", "cnr_abs", "cnr_signed", "pointing")


def _key(row: Mapping[str, Any]) -> tuple:
    return row["pair_id"], row["setting"], row.get("L"), row.get("T")


@dataclass
class ShippedAblation:
    folder: Path
    identity: dict
    rows: list[dict]

    @property
    def pair_ids(self) -> set[str]:
        return {r["pair_id"] for r in self.rows}

    def pairs(self, split_pairs: Sequence[Any]) -> list:
        """The pairs of the phantom split (in split order) that the run holds; all must be found."""
        planned = int((self.identity.get("data") or {}).get("pairs", 0))
        if len(self.pair_ids) < planned:
            raise ValueError(f"shipped ablation {self.folder} is incomplete: {len(self.pair_ids)} of its {planned} "
                             "pairs; finish the run (scripts/ship_ablation.py resumes) and ship it again")
        chosen = [p for p in split_pairs if p.pair_id in self.pair_ids]
        if len(chosen) != len(self.pair_ids):
            raise ValueError(f"shipped ablation {self.folder}: {len(self.pair_ids) - len(chosen)} of its pairs are not "
                             "in the phantom split this page regenerated")
        return chosen

    def check(self, grounder, pairs: Sequence[Any], settings: Mapping, window: tuple[int, int]) -> None:
        """Refuse the run unless it is what ``ablation(grounder, pairs, settings, window)`` computes."""
        from groundiff_core.evaluation.ablation import ablation_identity
        from groundiff_core.evaluation.identity import diff_paths

        mine = ablation_identity(grounder, pairs, settings, window)
        if mine != self.identity:
            raise ValueError(f"shipped ablation {self.folder} was made with other settings, pairs or weights "
                             f"(differs in {', '.join(diff_paths(self.identity, mine)) or 'its layout'}); "
                             "make it again with scripts/ship_ablation.py")

    def recheck(self, grounder, pairs: Sequence[Any], settings: Mapping, window: tuple[int, int], *,
                n: int, seed: int = 0, tolerance: float = TOLERANCE) -> dict:
        """Compute the ablation of a few whole images of ``pairs`` again and compare every row.

        Returns ``{"pairs", "rows", "max_abs_diff", "tolerance", "example"}`` (``example`` as
        :class:`~groundiff_core.evaluation.ablation.AblationResult`'s, for the page's figure);
        raises :class:`~groundiff_core.book.shipped.RecheckMismatch` naming the row and metric."""
        import torch

        from groundiff_core.evaluation.ablation import ablation

        chosen = recheck_selection(pairs, n, seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the run was made: the same floating-point reduction order
        try:
            live = ablation(grounder, chosen, settings, window=window)
        finally:
            torch.set_num_threads(threads)
        shipped = {_key(r): r for r in self.rows}
        worst = {m: 0.0 for m in METRICS}
        for r in live.rows:
            s = shipped.get(_key(r))
            if s is None:
                raise RecheckMismatch(f"re-computed row {_key(r)} has no shipped row")
            for m in METRICS:
                a, b = s.get(m), r.get(m)
                if (a is None and b is None) or (a is not None and b is not None and a != a and b != b):
                    continue  # both missing, or both NaN
                if a is None or b is None or not abs(float(a) - float(b)) <= tolerance:
                    raise RecheckMismatch(f"row {_key(r)}, metric {m}: shipped {a!r}, re-computed {b!r}, "
                                          f"tolerance {tolerance:g}")
                worst[m] = max(worst[m], abs(float(a) - float(b)))
        return {"pairs": len(chosen), "images": len({p.image_path for p in chosen}), "rows": len(live.rows), "max_abs_diff": worst, "tolerance": tolerance,
                "example": live.example}


def load(folder: str | os.PathLike) -> ShippedAblation:
    """Read a shipped ablation folder (``run.json`` and ``ablation.jsonl``)."""
    from groundiff_core.evaluation.ablation import load_ablation

    ident, rows = load_ablation(folder)
    if not rows:
        raise ValueError(f"shipped ablation {folder}: ablation.jsonl has no rows")
    return ShippedAblation(Path(folder), ident, rows)
