"""Dataset loaders: MS-CXR (both layouts), VinDr-CXR, NIH ChestX-ray14, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from groundiff_core.io.datasets import (GroundingPair, load_dataset, load_mscxr, load_nih, load_vindr,
                                     subset)
from groundiff_core.io.datasets.common import fit_boxes_to_image

import mscxr_fixture as fx


def _by_phrase(pairs):
    return {p.phrase: p for p in pairs}


# ------------------------------------------------------------------------------ MS-CXR
def test_mscxr_merges_boxes_of_same_path_and_phrase(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    pairs = load_mscxr(csv, root)
    assert [p.phrase for p in pairs] == ["left pleural effusion", "cardiomegaly",
                                         "right upper lobe consolidation", "small left pneumothorax",
                                         "bilateral edema"]
    ph = _by_phrase(pairs)
    np.testing.assert_array_equal(ph["left pleural effusion"].boxes, [[28, 26, 14, 10], [30, 20, 10, 6]])
    np.testing.assert_array_equal(ph["bilateral edema"].boxes, [[6, 14, 14, 12], [28, 14, 14, 12]])
    np.testing.assert_array_equal(ph["cardiomegaly"].boxes, [[14, 18, 20, 14]])
    eff = ph["left pleural effusion"]
    assert eff.category == "Pleural Effusion"
    assert eff.pair_id == "a1|left pleural effusion"
    assert eff.image_size == (fx.H, fx.W)
    assert eff.extra["split"] == "test" and eff.extra["dicom_id"] == "a1"
    assert eff.image_path == root / fx.rel_path("a1") and eff.image_path.is_file()
    assert eff.boxes.dtype == np.float64 and eff.boxes.shape == (2, 4)


def test_mscxr_resolves_paths_under_root_or_its_files_folder(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    for r in (root, root / "files"):
        pairs = load_mscxr(csv, r)
        assert all(p.image_path.is_file() for p in pairs), r


def test_mscxr_dcm_path_falls_back_to_jpg(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    text = csv.read_text().replace(".jpg", ".dcm")
    csv.write_text(text)
    pairs = load_mscxr(csv, root)
    assert all(p.image_path.suffix == ".jpg" and p.image_path.is_file() for p in pairs)


def test_mscxr_split_filter_and_v100_layout(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    test = load_mscxr(csv, root, split="test")
    assert {p.extra["dicom_id"] for p in test} == {"a1", "b2"} and len(test) == 4
    assert [p.phrase for p in load_mscxr(csv, root, split="val")] == ["bilateral edema"]
    with pytest.raises(ValueError, match=r"splits present: \['test', 'val'\]"):
        load_mscxr(csv, root, split="train")
    v100 = fx.write_csv(tmp_path / "v100.csv", columns=fx.COLUMNS[:-1])
    pairs = load_mscxr(v100, root)
    assert len(pairs) == 5 and "split" not in pairs[0].extra
    with pytest.raises(ValueError, match="no 'split' column"):
        load_mscxr(v100, root, split="test")


def test_mscxr_missing_columns_are_listed(tmp_path):
    cols = [c for c in fx.COLUMNS if c not in ("label_text", "h")]
    bad = fx.write_csv(tmp_path / "bad.csv", columns=cols)
    with pytest.raises(ValueError) as e:
        load_mscxr(bad, tmp_path)
    assert "'label_text'" in str(e.value) and "'h'" in str(e.value) and "MS-CXR" in str(e.value)


def test_missing_csv_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation CSV not found"):
        load_mscxr(tmp_path / "nope.csv", tmp_path)


def test_zero_area_boxes_are_skipped_with_a_warning(tmp_path):
    extra = [("a1", "Cardiomegaly", "cardiomegaly", 5, 5, 0, 10, "test"),      # zero width
             ("b2", "Atelectasis", "left basal atelectasis", 5, 5, 4, 0, "test"),  # only box: pair goes
             ("b2", "Atelectasis", "  ", 5, 5, 4, 4, "test")]                     # no text
    csv, root = fx.make_dataset(tmp_path, extra_rows=extra)
    with pytest.warns(UserWarning) as rec:
        pairs = load_mscxr(csv, root)
    msgs = " ".join(str(w.message) for w in rec)
    assert "2 zero-area box(es)" in msgs and "row 9" in msgs and "row 10" in msgs
    assert "1 pair(s) left with no valid box" in msgs
    assert "1 row(s) with an empty label_text: row 11" in msgs
    ph = _by_phrase(pairs)
    assert "left basal atelectasis" not in ph
    np.testing.assert_array_equal(ph["cardiomegaly"].boxes, [[14, 18, 20, 14]])


def test_boxes_outside_the_image_are_clipped_with_a_warning(tmp_path):
    extra = [("a1", "Cardiomegaly", "cardiomegaly", 40, 30, 20, 20, "test"),   # crosses bottom-right
             ("b2", "Edema", "edema", -4, -2, 10, 10, "test"),                   # crosses top-left
             ("b2", "Edema", "edema", 100, 100, 5, 5, "test")]                   # wholly outside
    csv, root = fx.make_dataset(tmp_path, extra_rows=extra)
    with pytest.warns(UserWarning) as rec:
        pairs = load_mscxr(csv, root)
    msgs = " ".join(str(w.message) for w in rec)
    assert "clipped 2 box(es)" in msgs and "outside the 48x40 image" in msgs
    ph = _by_phrase(pairs)
    np.testing.assert_array_equal(ph["cardiomegaly"].boxes, [[14, 18, 20, 14], [40, 30, 8, 10]])
    np.testing.assert_array_equal(ph["edema"].boxes, [[0, 0, 6, 8]])


def test_clean_csv_loads_without_warnings(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mscxr(csv, root)


def test_load_dataset_by_name(tmp_path):
    csv, root = fx.make_dataset(tmp_path)
    assert len(load_dataset("mscxr", csv, root, split="test")) == 4
    with pytest.raises(ValueError, match="unknown dataset 'chexpert'"):
        load_dataset("chexpert", csv, root)
    with pytest.raises(ValueError, match="needs the image root"):
        load_dataset("mscxr", csv)
    # phantom: paths relative to the CSV's folder by default
    ph = tmp_path / "phantom"
    fx.write_images(ph)
    pcsv = fx.write_csv(ph / "annotations.csv")
    assert all(p.image_path.is_file() for p in load_dataset("phantom", pcsv))


# ------------------------------------------------------------------------------ VinDr-CXR
def test_vindr_loader(tmp_path):
    csv = tmp_path / "annotations_train.csv"
    csv.write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        "img1,R1,Aortic enlargement,10,12,30,40\n"
        "img1,R2,Aortic enlargement,11,13,31,41\n"
        "img1,R1,ILD,0,0,5,5\n"
        "img2,R3,No finding,,,,\n"
        "img3,R2,Nodule/Mass,3,3,3,9\n"     # zero width: skipped with a warning
    )
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "img1.png").write_bytes(b"")
    with pytest.warns(UserWarning) as rec:
        pairs = load_vindr(csv, tmp_path)
    msgs = " ".join(str(w.message) for w in rec)
    assert "1 zero-area box(es): row 6" in msgs and "1 pair(s) left with no valid box" in msgs
    assert [p.pair_id for p in pairs] == ["img1|Aortic enlargement", "img1|ILD"]
    aorta, ild = pairs
    np.testing.assert_array_equal(aorta.boxes, [[10, 12, 20, 28], [11, 13, 20, 28]])
    assert aorta.phrase == "aortic enlargement" and aorta.extra["rad_ids"] == ["R1", "R2"]
    assert ild.phrase == "interstitial lung disease" and ild.category == "ILD"
    assert aorta.image_path == tmp_path / "train" / "img1.png"
    assert aorta.image_size is None
    with pytest.warns(UserWarning):
        per_rad = load_vindr(csv, tmp_path, per_radiologist=True)
    assert [p.pair_id for p in per_rad] == ["img1|Aortic enlargement|R1", "img1|Aortic enlargement|R2",
                                            "img1|ILD|R1"]


def test_vindr_missing_columns(tmp_path):
    csv = tmp_path / "a.csv"
    csv.write_text("image_id,class_name,x_min,y_min\nimg1,Nodule/Mass,1,2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['x_max', 'y_max'\]"):
        load_vindr(csv, tmp_path)


# ------------------------------------------------------------------------------ NIH
def test_nih_loader_reads_the_official_header(tmp_path):
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.08,547.02,86.4,79.18,,,\n"
        "00014716_007.png,Effusion,686.1,272.4,186.0,500.0,,,\n"
        "00014716_007.png,Effusion,100.0,100.0,50.0,50.0,,,\n"
    )
    sub = tmp_path / "images_001" / "images"
    sub.mkdir(parents=True)
    (sub / "00014716_007.png").write_bytes(b"")
    pairs = load_nih(csv, tmp_path)
    assert [p.pair_id for p in pairs] == ["00013118_008.png|Atelectasis", "00014716_007.png|Effusion"]
    atel, eff = pairs
    np.testing.assert_allclose(atel.boxes, [[225.08, 547.02, 86.4, 79.18]])
    assert eff.boxes.shape == (2, 4) and eff.phrase == "effusion" and eff.category == "Effusion"
    assert eff.image_path == sub / "00014716_007.png"
    assert atel.image_path == tmp_path / "00013118_008.png"  # not found: reported when evaluated


def test_nih_plain_column_names_and_missing_columns(tmp_path):
    csv = tmp_path / "b.csv"
    csv.write_text("Image Index,Finding Label,x,y,w,h\na.png,Mass,1,2,3,4\n")
    assert len(load_nih(csv, tmp_path)) == 1
    csv.write_text("Image Index,x,y,w,h\na.png,1,2,3,4\n")
    with pytest.raises(ValueError, match="'Finding Label'"):
        load_nih(csv, tmp_path)


# ------------------------------------------------------------------------------ helpers
def test_fit_boxes_rescales_to_the_image_read_and_clips():
    p = GroundingPair("x", "img.png", "edema", "Edema", [[10, 20, 40, 40], [0, 90, 10, 20]],
                      image_size=(100, 200))
    boxes, notes = fit_boxes_to_image(p, 50, 100)   # image downsampled by 2
    np.testing.assert_allclose(boxes, [[5, 10, 20, 20], [0, 45, 5, 5]])
    assert "rescaled" in notes[0] and any("clipped" in n for n in notes)
    boxes, notes = fit_boxes_to_image(p, 100, 200)
    np.testing.assert_allclose(boxes, [[10, 20, 40, 40], [0, 90, 10, 10]])


def test_subset_is_seeded_nested_and_in_dataset_order(tmp_path):
    pairs = [GroundingPair(str(i), f"{i}.png", "p", "c", [[0, 0, 1, 1]]) for i in range(50)]
    a, b = subset(pairs, 10, seed=3), subset(pairs, 20, seed=3)
    assert len(a) == 10 and set(map(id, a)) <= set(map(id, b))
    assert [int(p.pair_id) for p in b] == sorted(int(p.pair_id) for p in b)
    assert subset(pairs, 10, seed=3) == a and subset(pairs, 10, seed=4) != a
    assert subset(pairs, None) == pairs and subset(pairs, 99) == pairs


def test_phantom_generator_csv_loads_with_the_mscxr_loader(tmp_path):
    gen = pytest.importorskip("groundiff_core.phantom.generator")
    csv = gen.write_phantom_set(tmp_path / "ph", n=3, split="test", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = load_dataset("phantom", csv, split="test")
    assert pairs and all(p.image_path.is_file() for p in pairs)
    assert len({p.pair_id for p in pairs}) == len(pairs)
    for p in pairs:
        h, w = p.image_size
        assert (p.boxes[:, 2] > 0).all() and (p.boxes[:, 0] + p.boxes[:, 2] <= w).all()
        assert (p.boxes[:, 1] + p.boxes[:, 3] <= h).all()
