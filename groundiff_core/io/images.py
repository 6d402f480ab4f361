"""Reading any reasonable grayscale image into one format: float32 ``[H, W]`` in ``[0, 1]``.

Accepted inputs and how their intensities are scaled:

* files: PNG/JPEG/TIFF/... through Pillow (8- and 16-bit), DICOM through the optional ``pydicom``
  (``pip install groundiff_core[dicom]``): modality and VOI LUTs applied, min-max scaled, and
  MONOCHROME1 images inverted so that bright always means dense;
* ``PIL.Image``: mode ``1``/``L``/``P``/``RGB(A)``/``LA``/``I;16``/``I``/``F``;
* numpy arrays and torch tensors, ``(H, W)`` or channel-last ``(H, W, C)`` for numpy,
  ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` for torch, with ``C`` in 1, 3, 4:
  ``uint8`` / 255, ``uint16`` / 65535, ``bool`` as 0/1, other integer types min-max scaled (they
  carry no fixed bit depth), floats must already lie in [0, 1].

Colour images are averaged over their first three channels (alpha is dropped): chest X-rays stored
as RGB have equal channels.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_image", "image_size", "ImageInput"]

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor

_DICOM_SUFFIXES = {".dcm", ".dicom"}


def load_image(image: ImageInput) -> np.ndarray:
    """Any accepted image (see module docstring) -> float32 ``[H, W]`` in ``[0, 1]``.

    Parameters
    ----------
    image : a file path (Pillow's formats; DICOM with ``pydicom``), a PIL image, a numpy array
        ``[H, W]`` or ``[H, W, C]``, or a torch tensor ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]``
        (scaling of each type: the module docstring); colour is averaged to gray

    Returns
    -------
    float32 ``[H, W]`` in [0, 1], rows top to bottom, as stored (no resizing)
    """
    if isinstance(image, (str, os.PathLike)):
        return _load_file(Path(image))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _from_pil(image)
    if type(image).__module__.startswith("torch"):
        return _from_torch(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise ValueError(f"cannot read an image from a {type(image).__name__}; pass a file path, a PIL image, "
                     "a numpy array (H, W) or (H, W, C), or a torch tensor (H, W), (C, H, W) or (1, C, H, W)")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header where Pillow can read one (no pixels
    decoded), else from the image :func:`load_image` reads (DICOM)."""
    path = Path(path)
    if path.is_file() and not _is_dicom(path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                w, h = im.size
            return int(h), int(w)
        except (UnidentifiedImageError, OSError, SyntaxError):
            pass  # load_image gives the error message
    return tuple(int(s) for s in load_image(path).shape[:2])


# ---------------------------------------------------------------------- files
def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _load_file(path: Path) -> np.ndarray:
    from groundiff_core.util.fileio import regular_file

    regular_file(path, "image file", max_bytes=2 ** 30)  # a FIFO or /dev/zero would block or never end
    if _is_dicom(path):
        return _load_dicom(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _from_pil(im)
    except Image.DecompressionBombError:
        raise ValueError(f"refusing image file {path}: its header claims {_claimed_size(path)}, more than "
                         f"Pillow's safety limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a corrupt file or a "
                         "decompression bomb)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image file {path}: not a valid image Pillow can open "
                         f"(PNG, JPEG, TIFF, ...) or the file is corrupt ({e})") from None


_HEADER_LOCK = threading.Lock()


def _claimed_size(path: Path) -> str:
    """``"W x H pixels"`` as the file's header states it, read without decoding any pixel data.

    Pillow refuses to open such a file at all, so its check is switched off for the duration of this
    header-only read (under a lock: the limit is a module global).
    """
    from PIL import Image

    with _HEADER_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:  # the size is only for the message; the caller's error stands regardless
            return "an oversized image"
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return f"{w} x {h} pixels"


def _load_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise ValueError(f"{path} is a DICOM file; reading DICOM needs pydicom: "
                         "pip install 'groundiff_core[dicom]'") from None
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for broken files
        raise ValueError(f"cannot read DICOM file {path}: {e}") from None
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"DICOM file {path} holds pixel data of shape {arr.shape}; expected one 2-D image")
    out = _minmax(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


# ---------------------------------------------------------------------- in-memory images
def _from_pil(im) -> np.ndarray:
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "HSV", "LAB"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    if im.mode == "I":  # 32-bit integer, e.g. a 16-bit PNG in some Pillow versions
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return (arr.astype(np.float64) / 65535.0).astype(np.float32)
        return _minmax(arr.astype(np.float64)).astype(np.float32)
    if im.mode.startswith("I;16"):
        return _from_array(np.asarray(im).astype(np.uint16))
    return _from_array(np.asarray(im))


def _from_torch(t) -> np.ndarray:
    t = t.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 3:
        if t.shape[0] not in (1, 3, 4):
            raise ValueError(f"a 3-D torch image must be channel-first (C, H, W) with C in 1, 3, 4; "
                             f"got shape {tuple(t.shape)}")
        t = t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise ValueError(f"a torch image must have shape (H, W), (C, H, W) or (1, C, H, W); got {tuple(t.shape)}")
    if t.is_floating_point():
        t = t.float()
    return _from_array(t.numpy())


def _from_array(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"a 3-D image array must be channel-last (H, W, C) with C in 1, 3, 4 "
                         f"(2 = gray + alpha); got shape {arr.shape}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"an image must be 2-D (H, W) or 3-D (H, W, C); got {arr.ndim} dimensions, "
                         f"shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"the image is empty (shape {arr.shape})")
    x = _scale_to_unit(arr)
    if x.ndim == 3:  # gray(+alpha) -> first channel; RGB(A) -> mean of R, G, B
        x = x[..., 0] if x.shape[2] <= 2 else x[..., :3].mean(axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _scale_to_unit(arr: np.ndarray) -> np.ndarray:
    """Intensities to [0, 1] by dtype (see module docstring), float64."""
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if arr.dtype.kind in "iu":
        return _minmax(arr.astype(np.float64))
    if arr.dtype.kind == "f":
        x = arr.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("the image contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"a float image must lie in [0, 1], got values in [{lo:g}, {hi:g}]; "
                             "scale it, or pass it as uint8/uint16")
        return np.clip(x, 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {arr.dtype}; use uint8, uint16, another integer type, bool or float")


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
