"""The phantom test bed's phrase prior: fitted on the findings of training phantoms only."""

from __future__ import annotations

import numpy as np

from groundiff_core.methods.prior import PhrasePrior, normalised_boxes
from groundiff_core.phantom.generator import SIZE, make_phantom, train_seeds

__all__ = ["phantom_prior", "N_PRIOR"]

N_PRIOR = 3000  # training phantoms the prior is fitted on (about 6000 findings)


def phantom_prior(n: int = N_PRIOR, seed: int = 0, k: int = 100, progress: bool = False) -> PhrasePrior:
    """A :class:`~groundiff_core.methods.prior.PhrasePrior` fitted on the findings of the ``n``
    training phantoms of training seed block ``seed`` (never a validation or test phantom); about
    6 ms a phantom."""
    seeds = train_seeds(seed, n)
    if progress:
        from tqdm.auto import tqdm
        seeds = tqdm(seeds, desc="phrase prior: training phantoms", unit="img")
    examples = [(f.phrase, normalised_boxes(np.asarray(f.boxes), SIZE, SIZE))
                for s in seeds for f in make_phantom(s).findings]
    return PhrasePrior(examples, k=k)
