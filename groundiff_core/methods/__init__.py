"""Grounding methods to compare with cross-attention: :mod:`.baselines` (text-blind floors: random,
centre prior) and :mod:`.attribution` (Captum methods on the same frozen LDM). Each answers
``method.ground(image, phrases) -> Heatmaps`` and ``method.describe() -> dict``."""
