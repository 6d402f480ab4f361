"""load_image: every accepted input becomes float32 [H, W] in [0, 1]; bad input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from groundiff_core.io.images import load_image

RAMP8 = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (20, 1))  # [20, 32]
RAMP16 = (RAMP8.astype(np.uint16) * 257)  # same ramp at 16 bits


def _check(x, expected):
    assert x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_numpy_dtypes():
    _check(load_image(RAMP8), RAMP8 / 255.0)
    _check(load_image(RAMP16), RAMP16 / 65535.0)
    _check(load_image(RAMP8 / 255.0), RAMP8 / 255.0)
    _check(load_image(RAMP8.astype(np.float16) / np.float16(255)), (RAMP8.astype(np.float16) / np.float16(255)))
    _check(load_image(RAMP8 > 100), (RAMP8 > 100).astype(np.float32))
    signed = RAMP8.astype(np.int32) - 1000  # no fixed bit depth: min-max
    _check(load_image(signed), (signed - signed.min()) / (signed.max() - signed.min()))


def test_channels():
    rgb = np.stack([RAMP8, RAMP8, RAMP8], axis=2)
    _check(load_image(rgb), RAMP8 / 255.0)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=2)
    _check(load_image(rgba), RAMP8 / 255.0)
    _check(load_image(RAMP8[..., None]), RAMP8 / 255.0)
    colour = np.stack([RAMP8, np.zeros_like(RAMP8), np.full_like(RAMP8, 255)], axis=2)
    _check(load_image(colour), (RAMP8 / 255.0 + 1.0) / 3.0)  # mean of R, G, B


def test_torch_tensors():
    t = torch.from_numpy(RAMP8 / 255.0).float()
    _check(load_image(t), RAMP8 / 255.0)
    _check(load_image(t[None]), RAMP8 / 255.0)
    _check(load_image(t[None, None]), RAMP8 / 255.0)
    _check(load_image(t[None].repeat(3, 1, 1)), RAMP8 / 255.0)
    _check(load_image(torch.from_numpy(RAMP8)), RAMP8 / 255.0)
    _check(load_image(t.half()), (t.half().float()).numpy())


def test_pil_modes():
    _check(load_image(Image.fromarray(RAMP8)), RAMP8 / 255.0)
    _check(load_image(Image.fromarray(RAMP8).convert("RGB")), RAMP8 / 255.0)
    _check(load_image(Image.fromarray(RAMP8).convert("LA")), RAMP8 / 255.0)
    _check(load_image(Image.fromarray(RAMP8).convert("P")), RAMP8 / 255.0)
    _check(load_image(Image.fromarray(RAMP16)), RAMP16 / 65535.0)
    _check(load_image(Image.fromarray(RAMP16.astype(np.int32), mode="I")), RAMP16 / 65535.0)
    _check(load_image(Image.fromarray((RAMP8 / 255.0).astype(np.float32), mode="F")), RAMP8 / 255.0)


def test_files(tmp_path):
    Image.fromarray(RAMP8).save(tmp_path / "a.png")
    _check(load_image(tmp_path / "a.png"), RAMP8 / 255.0)
    _check(load_image(str(tmp_path / "a.png")), RAMP8 / 255.0)
    Image.fromarray(RAMP16).save(tmp_path / "b16.png")
    x = load_image(tmp_path / "b16.png")
    _check(x, RAMP16 / 65535.0)
    assert len(np.unique(x)) == len(np.unique(RAMP16))  # 16-bit precision kept
    Image.fromarray(RAMP8).convert("RGB").save(tmp_path / "c.jpg", quality=95)
    np.testing.assert_allclose(load_image(tmp_path / "c.jpg"), RAMP8 / 255.0, atol=0.04)


def _write_dicom(path, pixels: np.ndarray, photometric: str, **extra):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_monochrome2_and_monochrome1(tmp_path):
    pytest.importorskip("pydicom")
    pixels = (RAMP8.astype(np.uint16) * 16)  # 12-bit values
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    _write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2")
    _check(load_image(tmp_path / "m2.dcm"), expected)
    _write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    _check(load_image(tmp_path / "m1.dcm"), 1.0 - expected)  # inverted: bright = dense
    _write_dicom(tmp_path / "noext", pixels, "MONOCHROME2", RescaleSlope=2, RescaleIntercept=-100)
    _check(load_image(tmp_path / "noext"), expected)  # found by its DICM preamble


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="is a folder"):
        load_image(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(ValueError, match="cannot read image file .*bad.png"):
        load_image(tmp_path / "bad.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read image file"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match="cannot read DICOM file"):
        load_image(tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match="4 dimensions"):
        load_image(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ValueError, match="1 dimensions"):
        load_image(np.zeros(8))
    with pytest.raises(ValueError, match="channel-last"):
        load_image(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="channel-first"):
        load_image(torch.zeros(8, 8, 3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        load_image(np.full((4, 4), 255.0))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 4), np.uint8))
    with pytest.raises(ValueError, match="cannot read an image from a list"):
        load_image([[0, 1], [1, 0]])
