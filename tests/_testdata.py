"""Test data and helpers the test modules import (``from _testdata import ...``), beside the fixtures
of ``conftest.py``: the engine tests' phrases, the MONAI skip marker, a UNet call counter."""

from __future__ import annotations

import importlib.util

import pytest

PHRASES = ["left pleural effusion", "cardiomegaly", "right upper lobe opacity", "mild edema"]  # the engine tests' phrases

needs_monai = pytest.mark.skipif(
    importlib.util.find_spec("monai") is None or importlib.util.find_spec("einops") is None,
    reason="MONAI (and einops) not installed: pip install -e '.[monai]'")


def unet_call_sizes(model, call):
    """Run ``call()``; return its result and the batch size (rows) of every UNet call it made
    (whole or truncated: each embeds its timesteps first; a hook on the UNet itself would make the
    engine run whole passes, since its truncated walk never calls ``unet.forward``)."""
    sizes: list[int] = []
    hook = model.unet.time_proj.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    try:
        return call(), sizes
    finally:
        hook.remove()
