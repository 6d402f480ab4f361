"""Evaluation: a grounding method x a dataset -> per-pair metrics -> summaries with confidence
intervals. The public names below load lazily (``from groundiff_core.evaluation import evaluate``),
so that ``from groundiff_core.evaluation import metrics`` stays light.

* :mod:`.metrics` - the paper's metrics as pure functions (:mod:`.scorer`, :mod:`.boxes`: their
  implementation and box geometry);
* :mod:`.runner` - :func:`evaluate`, resumable, sharded;
* :mod:`.identity` - what a results folder holds, as content fingerprints;
* :mod:`.results` - ``results.jsonl`` and ``run.json``; :mod:`.summary` - statistics and tables;
  :mod:`.shards` - merging shard folders; :mod:`.options` - option checks;
  :mod:`.distributed` - one evaluation over the ranks of a launcher (torchrun).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from groundiff_core.util.lazy import lazy_getattr

if TYPE_CHECKING:  # what type checkers see; at run time the names load lazily
    from groundiff_core.evaluation.identity import method_identity, run_identity
    from groundiff_core.evaluation.shards import merge
    from groundiff_core.evaluation.options import check_options, parse_shard
    from groundiff_core.evaluation.results import load_results
    from groundiff_core.evaluation.runner import PAPER_INPUT_SIZE, evaluate
    from groundiff_core.evaluation.scorer import METRICS
    from groundiff_core.evaluation.summary import (bootstrap_ci, summarize, summary_table,
                                                   write_summary)

_LAZY = {
    "evaluate": "runner",
    "PAPER_INPUT_SIZE": "runner",
    "summarize": "summary",
    "summary_table": "summary",
    "write_summary": "summary",
    "bootstrap_ci": "summary",
    "load_results": "results",
    "merge": "shards",
    "method_identity": "identity",
    "run_identity": "identity",
    "check_options": "options",
    "parse_shard": "options",
    "METRICS": "scorer",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
