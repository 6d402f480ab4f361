"""The phantom's report phrases: MS-CXR-like templates and the closed vocabulary they span.

Each finding gets one phrase. Laterality and zone words appear where a report would write them,
and not always: about a third of the one-sided findings are written without their side
("pleural effusion", "patchy opacity"), as many MS-CXR phrases are. So a phrase never gives the
box away: where the finding lies must be read from the image (see :mod:`.generator`).
"""

from __future__ import annotations

import numpy as np

from groundiff_core.models.text import split_words

__all__ = ["SEVERITY", "ZONE_WORDS", "P_NO_SIDE", "phrase", "vocabulary"]

SEVERITY = {0: ["small", "mild", "minimal"], 1: ["moderate"], 2: ["large", "severe", "extensive"]}
ZONE_WORDS = {"upper": ["upper"], "mid": ["mid", "middle"], "lower": ["lower", "basal"]}
P_NO_SIDE = 0.35  # share of one-sided findings whose phrase names no side

# Templates that name the side ({side}) and, for the zone-bound findings, the zone ({zone}).
_SIDED: dict[str, list[str]] = {
    "pleural effusion": ["{sev} {side} pleural effusion", "{side} pleural effusion",
                         "{sev} {side} effusion", "{side} basal effusion", "{side} effusion"],
    "pneumothorax": ["{side} pneumothorax", "{sev} {side} pneumothorax",
                     "{side} apical pneumothorax", "{sev} {side} apical pneumothorax"],
    "consolidation": ["{side} {zone} consolidation", "consolidation in the {side} {zone} lung",
                      "dense {side} {zone} consolidation", "{side} {zone} lobe consolidation",
                      "{side} consolidation"],
    "lung opacity": ["{side} {zone} opacity", "patchy opacity in the {side} {zone} lung",
                     "hazy {side} {zone} opacity", "{sev} {side} {zone} opacity", "{side} lung opacity"],
    "pneumonia": ["{side} {zone} pneumonia", "{side} {zone} lobe pneumonia",
                  "patchy {side} {zone} infiltrate suggesting pneumonia", "{side} pneumonia"],
    "atelectasis": ["{side} basilar atelectasis", "plate-like atelectasis at the {side} base",
                    "{side} lower atelectasis", "{sev} {side} basal atelectasis"],
}
# The same findings written without a side.
_UNSIDED: dict[str, list[str]] = {
    "pleural effusion": ["pleural effusion", "{sev} pleural effusion", "{sev} effusion"],
    "pneumothorax": ["pneumothorax", "{sev} pneumothorax", "apical pneumothorax"],
    "consolidation": ["consolidation", "dense consolidation", "focal consolidation"],
    "lung opacity": ["patchy opacity", "hazy opacity", "lung opacity"],
    "pneumonia": ["pneumonia", "patchy infiltrate suggesting pneumonia"],
    "atelectasis": ["atelectasis", "plate-like atelectasis", "basilar atelectasis"],
}
# Findings with no side (the heart, bilateral edema) and bilateral ones.
_CENTRAL: dict[str, list[str]] = {
    "cardiomegaly": ["cardiomegaly", "{sev} cardiomegaly", "enlarged cardiac silhouette",
                     "the heart is enlarged", "{sev} enlargement of the cardiac silhouette"],
    "edema": ["pulmonary edema", "{sev} pulmonary edema", "bilateral perihilar edema",
              "{sev} interstitial edema", "perihilar haziness consistent with edema"],
}
_BILATERAL: dict[str, list[str]] = {
    "pleural effusion": ["bilateral pleural effusions", "{sev} bilateral pleural effusions",
                         "bilateral effusions"],
    "atelectasis": ["bibasilar atelectasis", "bilateral basilar atelectasis"],
}


def _pool(category: str, side: str, named: bool) -> list[str]:
    if category in _CENTRAL:
        return _CENTRAL[category]
    if side == "bilateral":
        return _BILATERAL[category]
    return _SIDED[category] if named else _UNSIDED[category]


def phrase(rng: np.random.Generator, category: str, side: str, zone: str, severity: int) -> str:
    """One report phrase for a finding (``side`` is the patient's: right, left, bilateral, central)."""
    named = side in ("right", "left") and rng.random() >= P_NO_SIDE
    pool = _pool(category, side, named)
    tpl = pool[rng.integers(len(pool))]
    zone_word = ZONE_WORDS[zone][rng.integers(len(ZONE_WORDS[zone]))]
    sev = SEVERITY[severity][rng.integers(len(SEVERITY[severity]))]
    return " ".join(tpl.format(sev=sev, side=side, zone=zone_word).split())


def vocabulary() -> list[str]:
    """Every word the templates can produce (the phantom model's closed vocabulary), sorted."""
    words = {"right", "left", "bilateral", "."}
    for v in list(SEVERITY.values()) + list(ZONE_WORDS.values()):
        words.update(v)
    for table in (_SIDED, _UNSIDED, _CENTRAL, _BILATERAL):
        for templates in table.values():
            for t in templates:
                for w in t.replace("{", " ").replace("}", " ").split():
                    if w not in ("sev", "side", "zone"):
                        words.update(split_words(w))
    return sorted(words)
