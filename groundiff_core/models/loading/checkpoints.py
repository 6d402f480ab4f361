"""Reading weight files safely: tensors only, never arbitrary unpickling.

PyTorch ``.pth`` checkpoints are pickles, and unpickling can run code. :func:`read_state_dict` uses
``torch.load(..., weights_only=True)``, which admits tensors and plain containers only, and turns a
refusal into an :class:`~.errors.UnsafeCheckpointError` that says why. It also unwraps the common
containers (``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` prefixes of DataParallel).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from groundiff_core.models.loading.errors import MissingWeightsError, UnsafeCheckpointError

__all__ = ["read_state_dict"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "weights")


def read_state_dict(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth``/``.pt``/``.bin`` (pickle, weights only) or ``.safetensors`` file, on CPU.

    ``mmap=True`` maps a zip-format checkpoint instead of reading it (``groundiff doctor`` counts the
    tensors of GB-sized files this way); a legacy (non-zip) checkpoint cannot be mapped and is read
    in full instead, exactly as the loader reads it. This is the one check of "can groundiff read this
    file": the loader and the doctor both call it.
    """
    from groundiff_core.util.fileio import regular_file

    path = Path(path)
    if not path.exists():
        raise MissingWeightsError(f"checkpoint not found: {path}")
    regular_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # a corrupt header or body: safetensors' own error types
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    try:
        obj = _torch_load(path, mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "global" in text.lower():
            detail = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower()), "")
            raise UnsafeCheckpointError(
                f"{path} stores Python objects besides tensors ({detail[:160]}); groundiff reads checkpoints "
                "with torch.load(weights_only=True) and refuses anything that needs arbitrary unpickling, "
                "because unpickling can run code. If you trust the file, re-save its tensors only, e.g. "
                "torch.save(model.state_dict(), 'weights.pth')."
            ) from None
        raise UnsafeCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {text.splitlines()[-3:]}"
        ) from None
    except Exception as e:  # noqa: BLE001 - random bytes also trip IndexError / KeyError inside the unpickler
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from None
    return _unwrap(obj, path)


def _torch_load(path: Path, mmap: bool):
    import warnings

    with warnings.catch_warnings():  # a corrupt file's first byte reads as an odd pickle protocol: our error says it
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return _torch_load_quiet(path, mmap)


def _torch_load_quiet(path: Path, mmap: bool):
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "_use_new_zipfile_serialization" not in str(e):  # not the legacy-format refusal
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    if not _is_tensor_dict(obj) and isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_tensor_dict(obj):
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} does not hold a state dict of tensors (found {what})")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
