"""The phantom generator: deterministic, laterality-correct, MS-CXR layout, closed vocabulary."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from groundiff_core.phantom.generator import (
    CATEGORIES, SIZE, SPLIT_SEEDS, make_phantom, vocabulary, write_phantom_set,
)
from groundiff_core.models.text import split_words, word_tokenizer


def test_same_seed_same_phantom_and_different_seeds_differ():
    a, b, c = make_phantom(5), make_phantom(5), make_phantom(6)
    np.testing.assert_array_equal(a.image, b.image)
    assert [f.phrase for f in a.findings] == [f.phrase for f in b.findings]
    assert not np.array_equal(a.image, c.image)


def test_images_are_valid_and_findings_have_boxes_inside():
    for s in range(40):
        ph = make_phantom(s)
        assert ph.image.shape == (SIZE, SIZE) and ph.image.dtype == np.float32
        assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
        assert 1 <= len(ph.findings) <= 3
        cats = [f.category for f in ph.findings]
        assert len(set(cats)) == len(cats), "findings of one image are of different categories"
        for f in ph.findings:
            assert f.category in CATEGORIES
            assert f.boxes, f
            for x, y, w, h in f.boxes:
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE


def test_laterality_follows_radiological_convention():
    """The patient's right is the image's left: 'right' findings lie left of the midline."""
    seen = {"right": 0, "left": 0}
    centres = {"right": [], "left": []}
    for s in range(100):
        for f in make_phantom(s).findings:
            if f.side in ("right", "left") and f.category != "cardiomegaly":
                (x, y, w, h), = f.boxes
                cx = x + w / 2
                named = {"right", "left"} & set(f.phrase.split())
                assert named <= {f.side}, (s, f)  # a phrase names its finding's side or none
                seen[f.side] += bool(named)
                seen["unnamed"] = seen.get("unnamed", 0) + (not named)
                centres[f.side].append(cx)
    assert seen["right"] > 10 and seen["left"] > 10 and seen["unnamed"] > 10
    # the chest moves, so the image's midline does not separate the sides for every image (see below)
    assert np.mean(centres["right"]) < SIZE / 2 < np.mean(centres["left"])


def test_right_findings_lie_image_left_of_left_findings_in_the_same_image():
    n = 0
    for s in range(300):
        fs = [f for f in make_phantom(s).findings if f.side in ("right", "left") and f.category != "cardiomegaly"]
        rights = [x + w / 2 for f in fs if f.side == "right" for x, y, w, h in f.boxes]
        lefts = [x + w / 2 for f in fs if f.side == "left" for x, y, w, h in f.boxes]
        if rights and lefts:
            assert max(rights) < min(lefts), s
            n += 1
    assert n > 20


def test_the_pose_and_the_place_inside_a_zone_vary():
    """Phantom v4: where a finding lies is not given by its phrase (the chest moves, scales and tilts)."""
    places = {}
    for s in range(400):
        for f in make_phantom(s).findings:
            for x, y, w, h in f.boxes:
                places.setdefault((f.category, f.side), []).append((x + w / 2, y + h / 2))
    spread = [np.std(np.array(v), axis=0) for k, v in places.items() if len(v) >= 20]
    assert len(spread) >= 8
    assert min(float(sd.max()) for sd in spread) > 8  # pixels, in a 128-pixel image


def test_bilateral_findings_have_two_boxes_on_both_sides():
    n = 0
    for s in range(150):
        for f in make_phantom(s).findings:
            if f.side == "bilateral":
                assert len(f.boxes) == 2
                centres = sorted(x + w / 2 for x, y, w, h in f.boxes)
                assert centres[1] - centres[0] > 20  # one box in each lung (the chest need not be centred)
                n += 1
    assert n > 5


def test_every_category_appears_and_phrases_use_the_closed_vocabulary():
    tok = word_tokenizer(vocabulary())
    vocab = set(vocabulary())
    cats = set()
    for s in range(120):
        for f in make_phantom(s).findings:
            cats.add(f.category)
            for w in split_words(f.phrase):
                assert w in vocab, (w, f.phrase)
            ids = tok(f.phrase)["input_ids"]
            assert len(ids) == len(split_words(f.phrase)) + 2  # one token per word + start/end
    assert cats == set(CATEGORIES)


def test_write_phantom_set_writes_mscxr_layout(tmp_path):
    from PIL import Image

    csv_path = write_phantom_set(tmp_path, 5, split="test", progress=False)
    rows = list(csv.DictReader(open(csv_path)))
    assert set(["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                "image_width", "image_height", "split"]) <= set(rows[0])
    paths = {r["path"] for r in rows}
    assert len(paths) == 5
    for p in paths:
        im = np.asarray(Image.open(tmp_path / p))
        assert im.shape == (SIZE, SIZE) and im.dtype == np.uint16
    first = min(paths)
    assert first.endswith(f"{SPLIT_SEEDS['test']:08d}.png")


def test_splits_use_disjoint_seeds():
    ranges = sorted(SPLIT_SEEDS.values())
    assert all(b - a >= 1_000_000 for a, b in zip(ranges, ranges[1:]))


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n must be positive"):
        write_phantom_set(tmp_path, 0)
    with pytest.raises(ValueError, match="split must be one of"):
        write_phantom_set(tmp_path, 2, split="holdout")


def test_cli_writes_a_set(tmp_path):
    from groundiff_core.cli import main

    assert main(["phantom", "--out", str(tmp_path), "--n", "3", "--seed", "42"]) == 0
    assert (tmp_path / "annotations.csv").exists()
    assert len(list((tmp_path / "images").glob("*.png"))) == 3


def test_word_tokenizer_is_deterministic_and_keeps_each_word_whole():
    """The tokenizer is rebuilt for every training run, so its ids must not depend on hashing order."""
    words = vocabulary()
    a, b = word_tokenizer(words), word_tokenizer(list(reversed(words)))
    assert a.get_vocab() == b.get_vocab()
    for w in {p for x in words for p in split_words(x)}:
        assert len(a(w, add_special_tokens=False)["input_ids"]) == 1, w
    ids = a("left pleural effusion")["input_ids"]
    assert ids[0] == a.bos_token_id and ids[-1] == a.eos_token_id


_DIGEST = """
import hashlib, numpy as np
from groundiff_core.phantom.generator import make_phantom
h = hashlib.sha256()
for s in range({start}, {start} + {n}):
    h.update(np.round(make_phantom(s).image * 65535).astype(np.uint16).tobytes())
print(h.hexdigest())
"""


def test_the_images_are_the_same_whichever_simd_kernels_numpy_picks():
    """numpy dispatches sin, cos and power to AVX-512, AVX2 or SSE kernels by CPU; the phantom must
    not change with them (a split regenerated on an AVX2 machine once differed from the shipped
    runs' AVX-512 one in about 4 pixels per 10,000). Here the kernels above numpy's baseline are
    switched off in steps (NPY_DISABLE_CPU_FEATURES), as on an older CPU."""
    import os
    import subprocess
    import sys

    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as umath

    found = [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]
    if not found:
        pytest.skip("this CPU has no numpy kernels above the baseline to switch off")
    code = _DIGEST.format(start=SPLIT_SEEDS["test"], n=40)
    digests = {}
    for k in range(len(found) + 1):  # none off, then the highest ones off, down to the baseline only
        off = " ".join(found[len(found) - k:])
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": off}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests[off or "none"] = out.stdout.strip()
    assert len(set(digests.values())) == 1, digests


def test_the_shipped_runs_read_the_split_this_machine_regenerates(tmp_path):
    """Every shipped phantom run of the book (its rows' content keys: annotation and image bytes) is
    reproduced by the test split generated here, so the book's pages can read them on this CPU."""
    from pathlib import Path

    from groundiff_core.book import shipped
    from groundiff_core.evaluation.controls import shuffled_pairs

    results = Path(__file__).resolve().parents[1] / "book" / "results"
    runs = {name: shipped.load_shipped(results / name)
            for name in ("phantom-paper", "phantom-paper-shuffled", "phantom-fast", "phantom-class-tokens")}
    pairs = runs["phantom-paper"].phantom_pairs(tmp_path)  # regenerates and checks the paper run
    for name, run in runs.items():
        assert run.phantom_images == runs["phantom-paper"].phantom_images, name
        run.check_data(shuffled_pairs(pairs, seed=0) if name.endswith("shuffled") else pairs)
