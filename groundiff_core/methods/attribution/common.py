"""What every attribution module shares: the optional Captum import and the input checks.

Inputs are checked and prepared exactly as the cross-attention engine does, so every method
accepts and refuses the same images and phrases with the same messages.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from groundiff_core.io.preprocess import CropGeometry, prepare_image
from groundiff_core.models.ldm import LDM
from groundiff_core.util.phrases import as_phrase_list

__all__ = ["captum_attr", "checked_phrases", "prepare_input"]


def captum_attr():
    """``captum.attr``, with an install hint: Captum is the optional ``[captum]`` extra."""
    try:
        import captum.attr as attr
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the Captum comparison methods need captum: pip install 'groundiff_core[captum]'"
        ) from e
    return attr


def checked_phrases(model: LDM, phrases: Sequence[str] | str) -> list[str]:
    """``phrases`` as a list (a single string is one phrase), refused as the engine refuses them.

    The generic checks (non-empty list of non-blank strings) are
    :func:`~groundiff_core.util.phrases.as_phrase_list`; the model-specific ones (token limit, at
    least one token between the start and end tokens) are the engine's ``Grounder.check_phrases``.
    """
    from groundiff_core.engine.grounder import Grounder  # lazy: the engine imports much more

    phrases = as_phrase_list(phrases)
    Grounder(model).check_phrases(phrases)
    return phrases


def prepare_input(model: LDM, image: Any) -> tuple[torch.Tensor, CropGeometry]:
    """Any supported image -> ``[1, 1, S, S]`` float32 on the model's device, and its geometry."""
    from groundiff_core.io.images import load_image

    x, geom = prepare_image(load_image(image), model.input_size)
    return x.to(model.device, torch.float32), geom
