"""The JBHI paper's Table III: cross-attention read from the class name's tokens only.

The authors' code compares two readings of the same attention: every token of the phrase (the
method's default, :attr:`GroundingConfig.tokens` = "phrase") and only the tokens that spell the
finding's class name ("pleural effusion" in "small left pleural effusion"). Where the phrase does
not contain the class name ("enlarged heart" for cardiomegaly) their map is NaN, which their
metrics score 0 (mIoU, CNR) and 0.5 (AUC-ROC). :class:`ClassNameTokens` is that reading as a
grounding method: the same grounder, the same inversion, only the token weights differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from groundiff_core.engine.recording import word_positions
from groundiff_core.heatmaps import Heatmaps
from groundiff_core.util.phrases import as_phrase_list

__all__ = ["ClassNameTokens"]


@dataclass
class ClassNameTokens:
    """Ground each phrase on the tokens of its class name (``class_of[phrase]``) with ``grounder``.

    ``class_of`` maps every phrase to its class (for a dataset: ``{p.phrase: p.category for p in
    pairs}``); a phrase not in it is refused by name.
    """

    grounder: object  # a groundiff_core.engine.grounder.Grounder
    class_of: Mapping[str, str]
    name: str = "class-name tokens"
    found: dict = field(default_factory=dict)  # phrase -> positions used ([] = class name absent)

    @property
    def model(self):
        """The grounder's model: part of the run's identity (its weights' fingerprint) in results files."""
        return self.grounder.model

    @property
    def config(self):
        return self.grounder.config

    def describe(self) -> dict:
        inner = self.grounder.describe() if hasattr(self.grounder, "describe") else {}
        return {**inner, "method": self.name, "tokens": "class name only (JBHI Table III)"}

    def _positions(self, phrases: Sequence[str]) -> list[list[int]]:
        missing = [p for p in phrases if p not in self.class_of]
        if missing:
            raise ValueError(f"no class name for phrase {missing[0]!r}; give class_of for every phrase")
        tok = self.grounder.model.tokenizer
        positions = [word_positions(tok, p, self.class_of[p]) for p in phrases]
        self.found.update(zip(phrases, positions))
        return positions

    def ground(self, image, phrases: Sequence[str] | str) -> Heatmaps:
        return self.ground_batch([image], [phrases])[0]

    def ground_batch(self, images, phrases_per_image) -> list[Heatmaps]:
        """Several images at once (the grounder's ``batch_size`` per inversion), as the runner calls it."""
        lists = [as_phrase_list(p) for p in phrases_per_image]
        out = self.grounder.ground_batch(images, lists, token_positions=[self._positions(p) for p in lists])
        for h in out:
            h.info.update(method=self.name)
        return out
