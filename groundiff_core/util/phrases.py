"""Phrase validation, once, so that every grounding method accepts and refuses the same inputs."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["as_phrase_list", "side_of_phrase"]


def as_phrase_list(phrases: Sequence[str] | str) -> list[str]:
    """``phrases`` as a non-empty list of non-blank strings (a single string means one phrase).

    Raises ``ValueError`` naming the offending phrase. Model-specific checks (token limits, the
    tokenizer's vocabulary) come on top of this, in :meth:`groundiff_core.models.ldm.LDM` users.
    """
    if isinstance(phrases, str):
        phrases = [phrases]
    if not isinstance(phrases, (list, tuple)) or not phrases:
        raise ValueError("phrases must be a non-empty list of strings")
    for k, p in enumerate(phrases):
        _check_one(k, p)
    return list(phrases)


def _check_one(k: int, p: Any) -> None:
    if not isinstance(p, str):
        raise ValueError(f"phrase {k} is a {type(p).__name__}, not a string")
    if not p.strip():
        raise ValueError(f"phrase {k} is empty; give the finding to ground, e.g. 'left pleural effusion'")


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
