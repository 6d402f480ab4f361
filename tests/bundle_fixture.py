"""Write a MONAI model-zoo bundle folder holding the paper's architecture at reduced width (no tests here).

``write_bundle(root)`` lays out what the model zoo's ``cxr_image_synthesis_latent_diffusion_model``
looks like on disk: ``configs/inference.json`` (or ``.yaml``) with ``autoencoder_def``,
``diffusion_def``, a scheduler and a ``LatentDiffusionInferer``, sizes given as ``"@key"``
references, expressions the loader must leave alone (``"$..."``), an unrelated ``_target_``
(``scripts.sampler.Sampler``); ``models/autoencoder.pth`` and ``models/diffusion_model.pth`` with
random weights (old GenerativeModels or MONAI core state-dict layout); and, unless told otherwise,
the tests' tiny CLIP text encoder as ``text_encoder/`` + ``tokenizer/``. The networks are those of
:mod:`test_loading_support` (every width / 8, 64 px images, 8 px latent). Needs MONAI (``[monai]`` extra).

Used by ``tests/test_loading_bundle.py``; meant as well as a small real-format fixture for other
tests (e.g. running the notebooks on a MONAI bundle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from test_loading_support import AE_KW, IMAGE, UNET_KW, write_checkpoints, write_text_encoder

__all__ = ["WrittenBundle", "write_bundle", "write_config", "bundle_config", "BUNDLE_SCALE_FACTOR", "IMAGE"]

BUNDLE_SCALE_FACTOR = 0.25  # not the paper's 0.3, so a test sees that the bundle's value is used
_PACKAGES = {"generative": ("generative.networks.nets", "generative.networks.schedulers", "generative.inferers"),
             "monai": ("monai.networks.nets", "monai.networks.schedulers", "monai.inferers")}


@dataclass
class WrittenBundle:
    """A bundle on disk and the MONAI networks whose weights it holds (for reference forwards)."""

    root: Path
    config: Path
    unet: torch.nn.Module
    autoencoder: torch.nn.Module
    scale_factor: float | None


def bundle_config(targets: str = "monai", *, scheduler: bool = True, inferer: bool = True,
                  scale_factor: float = BUNDLE_SCALE_FACTOR, latent_shape: bool = True) -> dict:
    """The inference config as a dict, in the model zoo's style (``targets``: "generative" or "monai")."""
    nets, schedulers, inferers = _PACKAGES[targets]
    channels = "num_channels" if targets == "generative" else "channels"  # GenerativeModels' argument name
    ae = {k: list(v) if isinstance(v, tuple) else v for k, v in AE_KW.items()}
    unet = {k: list(v) if isinstance(v, tuple) else v for k, v in UNET_KW.items()}
    ae[channels] = ae.pop("channels")
    unet[channels] = unet.pop("channels")
    ae["latent_channels"] = "@latent_channels"
    unet["in_channels"] = unet["out_channels"] = "@latent_channels"
    latent = IMAGE // 2 ** (len(AE_KW["channels"]) - 1)
    config: dict = {
        "imports": ["$import torch", "$from pathlib import Path"],
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "latent_channels": AE_KW["latent_channels"],
        "autoencoder_def": {"_target_": f"{nets}.AutoencoderKL", "spatial_dims": 2, **ae},
        "load_autoencoder_path": "$@model_dir + '/autoencoder.pth'",
        "autoencoder": "$@autoencoder_def.to(@device)",
        "diffusion_def": {"_target_": f"{nets}.DiffusionModelUNet", "spatial_dims": 2, **unet},
        "network_def": "@diffusion_def",
        "load_diffusion_path": "$@model_dir + '/diffusion_model.pth'",
        "noise": f"$torch.randn((1, @latent_channels, {latent}, {latent})).to(@device)",
        "sampler": {"_target_": "scripts.sampler.Sampler", "_requires_": "@set_timesteps"},
    }
    if latent_shape:
        config["latent_shape"] = ["@latent_channels", latent, latent]
    if scheduler:
        config["noise_scheduler"] = {
            "_target_": f"{schedulers}.DDIMScheduler", "_requires_": ["@load_diffusion_path"],
            "num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0205,
            "prediction_type": "v_prediction", "clip_sample": False}
        config["set_timesteps"] = "$@noise_scheduler.set_timesteps(num_inference_steps=50)"
    if inferer:
        config["scale_factor"] = scale_factor
        config["inferer"] = {"_target_": f"{inferers}.LatentDiffusionInferer",
                             "scheduler": "@noise_scheduler" if scheduler else None, "scale_factor": "@scale_factor"}
    return config


def write_bundle(root: str | Path, *, targets: str = "monai", layout: str = "generative", fmt: str = "json",
                 config_in_configs: bool = True, weights_in_models: bool = True, text_encoder: bool = True,
                 scheduler: bool = True, inferer: bool = True, latent_shape: bool = True,
                 config: dict | None = None, autoencoder_overrides: dict | None = None) -> WrittenBundle:
    """Write a scaled paper-architecture bundle to ``root``.

    ``targets``: ``_target_`` names of GenerativeModels ("generative") or MONAI core ("monai");
    ``layout``: state-dict names of the checkpoints ("generative": old, as published; "monai": core);
    ``fmt``: "json" or "yaml"; ``config_in_configs`` / ``weights_in_models``: the bundle's subfolders
    or everything at the top; ``text_encoder``: write the tiny CLIP text encoder into the folder;
    ``config``: write this dict instead of :func:`bundle_config`'s; ``autoencoder_overrides``: MONAI
    ``AutoencoderKL`` arguments for the saved weights only (the config keeps :func:`bundle_config`'s).
    """
    root = Path(root)
    unet, ae = write_checkpoints(root, layout, weights_in_models, **(autoencoder_overrides or {}))
    if config is None:
        config = bundle_config(targets, scheduler=scheduler, inferer=inferer, latent_shape=latent_shape)
    path = write_config(root, config, fmt=fmt, in_configs=config_in_configs)
    if text_encoder:
        write_text_encoder(root)
    return WrittenBundle(root=root, config=path, unet=unet, autoencoder=ae,
                         scale_factor=BUNDLE_SCALE_FACTOR if inferer else None)


def write_config(root: str | Path, config: dict, *, fmt: str = "json", in_configs: bool = True) -> Path:
    """Write ``config`` as the bundle's ``inference.json``/``.yaml`` (and a ``metadata.json`` naming it)."""
    where = Path(root) / "configs" if in_configs else Path(root)
    where.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = where / "inference.json"
        path.write_text(json.dumps(config, indent=4))
    elif fmt == "yaml":
        import yaml

        path = where / "inference.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        raise ValueError(f"fmt must be 'json' or 'yaml', got {fmt!r}")
    if in_configs:
        (where / "metadata.json").write_text(json.dumps({"name": "scaled_cxr_ldm_bundle", "version": "0.0.1"}))
    return path
