"""Loading models: ``load_model(source)`` returns a ready :class:`~groundiff_core.models.ldm.LDM`, offline.

Sources
-------
``"phantom"``
    The project's own small chest-phantom LDM, shipped inside the package.
``"tiny"``
    A randomly initialised tiny LDM with the paper's UNet layout (tests, examples); keyword
    overrides go to :func:`groundiff_core.models.architectures.tiny_ldm`.
``"paper"`` or a folder holding ``autoencoder.pth`` and ``diffusion_model.pth``
    The paper's MONAI chest X-ray LDM with the SD 2.1 base text encoder (:mod:`.paper`); ``"paper"``
    looks in ``$GROUNDIFF_PAPER_DIR`` (default ``~/.cache/groundiff/paper``).
a MONAI bundle folder (``configs/inference.json`` or ``.yaml``, weights in ``models/``)
    Any MONAI latent diffusion model: the architecture, scheduler and scale factor come from the
    bundle's definitions, the text encoder from the folder or ``text_encoder=`` (:mod:`.bundle`).
a folder holding ``model_index.json``
    Any LDM in the Stable Diffusion pipeline layout (:mod:`.diffusers_dir`).
``"owner/name"``
    A Hugging Face Hub repository in that layout: downloaded only with ``allow_download=True``.

Nothing reaches the network unless ``allow_download=True``; with ``HF_HUB_OFFLINE=1`` nothing does at all.
"""

from __future__ import annotations

from pathlib import Path

import torch

from groundiff_core.models.ldm import LDM
from groundiff_core.models.loading.errors import MissingWeightsError, StateDictMismatchError, UnsafeCheckpointError, UnsupportedArchitectureError

__all__ = ["load_model", "resolve_device", "resolve_dtype", "check_device_available", "MissingWeightsError",
           "StateDictMismatchError", "UnsafeCheckpointError", "UnsupportedArchitectureError", "SOURCES"]

SOURCES = ("phantom", "tiny", "paper", "<folder with model_index.json>",
           "<MONAI bundle folder with configs/inference.json or .yaml>",
           "<folder with autoencoder.pth + diffusion_model.pth>", "<owner/name on the Hugging Face Hub>")

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` (leave as loaded), ``"auto"`` (CUDA, then MPS, then CPU) or any torch device."""
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'") from None
    check_device_available(dev)
    return dev


def check_device_available(device: torch.device) -> None:
    """Refuse, before any work, a CUDA or MPS device this machine does not have (named in the message)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {str(device)!r} is not available: {why}; use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} is not available: this machine has {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {str(device)!r} is not available: no Apple MPS backend on this machine; "
                             "use 'cpu' or 'auto'")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``None``, a ``torch.dtype`` or one of ``float32``/``float16``/``bfloat16`` (and short forms)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(_DTYPES)}")
    return _DTYPES[key]


def _reject(overrides: dict, allowed: tuple[str, ...], source: str) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model source {source!r}; allowed: {sorted(allowed)}")


def _phantom(overrides: dict) -> LDM:
    from groundiff_core.phantom.model import load_phantom

    _reject(overrides, ("path",), "phantom")
    return load_phantom(**overrides)


def _tiny(overrides: dict) -> LDM:
    import inspect

    from groundiff_core.models.architectures import tiny_ldm

    _reject(overrides, tuple(inspect.signature(tiny_ldm).parameters), "tiny")
    return tiny_ldm(**overrides)


def _is_paper_dir(path: Path) -> bool:
    return any((path / sub / name).is_file() for sub in (".", "models")
               for name in ("autoencoder.pth", "diffusion_model.pth"))


def _kind(source, overrides: dict, text_encoder) -> tuple[str, Path | None]:
    """Which loader a source needs: phantom, tiny, paper, bundle, diffusers or hub (and the local folder)."""
    from groundiff_core.models.loading.bundle import find_bundle_config
    from groundiff_core.models.loading.diffusers_dir import is_diffusers_dir
    from groundiff_core.models.loading.hub import looks_like_repo_id

    if source in ("phantom", "tiny"):
        return str(source), None
    if source == "paper":
        return "paper", None
    path = Path(str(source)).expanduser()
    if path.is_dir():
        if is_diffusers_dir(path):
            return "diffusers", path
        if find_bundle_config(path) is not None:
            return "bundle", path
        if _is_paper_dir(path) or text_encoder is not None or set(overrides) & {"autoencoder", "diffusion_model"}:
            return "paper", path
        raise FileNotFoundError(
            f"{path} is neither a diffusers model folder (no model_index.json), a MONAI bundle (no "
            "configs/inference.json or .yaml) nor a folder of the paper's MONAI checkpoints (no autoencoder.pth / "
            "diffusion_model.pth, also not in models/)")
    if path.exists():
        raise ValueError(f"{path} is a file; pass the folder that holds the model (sources: {', '.join(SOURCES)})")
    if isinstance(source, str) and looks_like_repo_id(source):
        return "hub", None
    raise FileNotFoundError(f"model source {source!r} not found; sources: {', '.join(SOURCES)}")


def _dispatch(source, text_encoder, allow_download: bool, overrides: dict) -> LDM:
    from groundiff_core.models.loading.bundle import MONAI_OVERRIDES, load_bundle
    from groundiff_core.models.loading.diffusers_dir import DIFFUSERS_OVERRIDES, load_diffusers_dir
    from groundiff_core.models.loading.hub import download_snapshot
    from groundiff_core.models.loading.paper import load_paper_model

    kind, path = _kind(source, overrides, text_encoder)
    if text_encoder is not None and kind not in ("paper", "bundle"):
        raise ValueError("text_encoder= applies to MONAI models only (source 'paper', a MONAI bundle folder or a "
                         f"folder of MONAI checkpoints), not to {source!r}")
    if kind == "bundle":
        _reject(overrides, MONAI_OVERRIDES, str(source))
        return load_bundle(path, text_encoder=text_encoder, allow_download=allow_download, **overrides)
    if kind == "phantom":
        return _phantom(overrides)
    if kind == "tiny":
        return _tiny(overrides)
    if kind == "paper":
        _reject(overrides, MONAI_OVERRIDES, str(source))
        return load_paper_model(path, text_encoder=text_encoder, allow_download=allow_download, **overrides)
    _reject(overrides, DIFFUSERS_OVERRIDES, str(source))
    if kind == "diffusers":
        return load_diffusers_dir(path, **overrides)
    if not allow_download:  # kind == "hub"
        raise FileNotFoundError(
            f"{source!r} is not a local folder. If it is a Hugging Face Hub repository, download it "
            f"(e.g. `hf download {source} --local-dir DIR`) and pass DIR, or call "
            "load_model(..., allow_download=True) to let groundiff fetch it.")
    from groundiff_core.models.loading.catalog import cache_root

    local = cache_root() / "hub" / str(source).replace("/", "--")
    download_snapshot(str(source), local, ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*",
                                           "scheduler/*"])
    return load_diffusers_dir(local, **overrides)


def load_model(source: str | Path, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, text_encoder: str | Path | None = None,
               allow_download: bool = False, **overrides) -> LDM:
    """Load a latent diffusion model for grounding; see the module docstring for ``source``.

    Parameters
    ----------
    device : where to put the model (``"auto"`` picks CUDA, MPS, then CPU); ``None`` leaves it on the CPU
    dtype : e.g. ``torch.float16`` or ``"float16"`` for accelerators; ``None`` keeps the stored precision
    text_encoder : for MONAI models (the paper's, a bundle folder): the SD 2.1 base folder (with
        ``text_encoder/`` and ``tokenizer/``) or its ``text_encoder`` folder, if not inside the model folder
    allow_download : permit downloads from the Hugging Face Hub (never done otherwise)
    overrides : source-specific settings, e.g. ``input_size=``, ``unet_config=`` (a MONAI
        ``diffusion_def`` dict), ``autoencoder=`` / ``diffusion_model=`` (explicit checkpoint paths),
        ``cache_dir=``; unknown names raise ``ValueError`` listing the allowed ones

    Returns
    -------
    :class:`~groundiff_core.models.ldm.LDM`: UNet, VAE, text encoder and tokenizer in diffusers form,
    with the noise schedule, latent scale and input size ``S`` the engine needs, in eval mode
    """
    if not isinstance(source, (str, Path)) or not str(source):
        raise ValueError(f"model source must be a name or a path, got {source!r}; sources: {', '.join(SOURCES)}")
    from groundiff_core.util.quiet import quiet_libraries

    dev, dt = resolve_device(device), resolve_dtype(dtype)
    with quiet_libraries():
        model = _dispatch(source, text_encoder, allow_download, overrides)
    if dev is not None or dt is not None:
        model.to(device=dev, dtype=dt)
    return model
