"""Faults of the phantom's seeds (``phantom.generator``, ``phantom.train``, issue 13): training never
draws validation or test phantoms, nor another run's."""

from __future__ import annotations

import pytest


class _Enough(Exception):
    pass


@pytest.mark.parametrize("seed", [0, 9, 10, 20, 35])
def test_training_never_draws_validation_or_test_phantoms(tmp_path, monkeypatch, seed):
    import groundiff_core.phantom.train as train
    from groundiff_core.phantom.generator import SPLIT_SEEDS, SPLIT_SPAN, make_phantom

    drawn: list[int] = []

    def record(s: int):
        drawn.append(s)
        if len(drawn) == 3:
            raise _Enough
        return make_phantom(s)

    monkeypatch.setattr(train, "make_phantom", record)
    with pytest.raises(_Enough):
        train.main(["--out", str(tmp_path / "run"), "--seed", str(seed), "--n-train", "3"])
    held_out = [range(SPLIT_SEEDS[s], SPLIT_SEEDS[s] + SPLIT_SPAN) for s in ("val", "test")]
    assert not [s for s in drawn if any(s in r for r in held_out)], drawn
    if seed == 0:  # the shipped model's data is unchanged
        assert drawn == [0, 1, 2]


def test_training_seeds_of_different_runs_never_overlap():
    from groundiff_core.phantom.generator import TRAIN_BLOCK, train_seeds

    starts = [train_seeds(s, TRAIN_BLOCK).start for s in range(40)]
    assert all(b - a >= TRAIN_BLOCK for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match=">= 0"):
        train_seeds(-1, 10)
    with pytest.raises(ValueError, match="between 1 and"):
        train_seeds(0, TRAIN_BLOCK + 1)
