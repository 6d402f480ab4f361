"""MONAI model-zoo bundle folders: the architecture from the bundle's config, the weights from ``models/``.

A bundle carries its own definition (``configs/inference.json`` or ``.yaml``) beside its weights
(``models/autoencoder.pth``, ``models/diffusion_model.pth``), so loading one needs no out-of-band
knowledge. The config's syntax (references, ``_target_`` definitions) is read by
:mod:`.bundle_config`; here :func:`read_bundle` turns the definitions into the architecture, the
noise schedule, the latent scale factor and the input size, and :func:`load_bundle` builds the model.

What a bundle does not state falls back to the paper's model (METHOD.md): the scheduler
(v-prediction, scaled-linear betas 0.0015..0.0205), the latent scale factor 0.3 and the 512 px
input; :attr:`BundleSpec.sources` says where each value came from. Whether the autoencoder has a
middle attention block (``with_*_nonlocal_attn``) is read from the checkpoint's tensors, as for the
paper's model, because the model zoo's CXR bundle changed that setting between versions. The
checkpoints are converted by the same code as the paper's (:mod:`.paper`, :mod:`.monai_unet`,
:mod:`.monai_autoencoder`), old GenerativeModels or MONAI core layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from groundiff_core.models.loading.bundle_config import (CONFIG_NAMES, BundleError, Definition, Resolver,
                                                         find_bundle_config, find_definitions, parse_config)
from groundiff_core.models.loading.errors import MissingWeightsError, StateDictMismatchError
from groundiff_core.models.loading.monai_autoencoder import MonaiAutoencoderConfig
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig

__all__ = ["BundleError", "BundleSpec", "Definition", "CONFIG_NAMES", "find_bundle_config", "read_bundle",
           "load_bundle", "BUNDLE_OVERRIDES"]

CHECKPOINTS = {"autoencoder": ("models/autoencoder.pth", "autoencoder.pth"),
               "diffusion_model": ("models/diffusion_model.pth", "diffusion_model.pth")}

# MONAI / GenerativeModels schedule names -> groundiff's NoiseSchedule.beta_schedule
_SCHEDULES = {"linear_beta": "linear", "scaled_linear_beta": "scaled_linear", "linear": "linear",
              "scaled_linear": "scaled_linear"}
# scheduler arguments that only steer sampling, not the training noise schedule the inversion follows
_SAMPLING_ONLY = ("clip_sample", "clip_sample_min", "clip_sample_max", "set_alpha_to_one", "steps_offset",
                  "variance_type", "skip_prk_steps")
_PAPER_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0205,
                       beta_schedule="scaled_linear", prediction_type="v_prediction")
_PAPER_SCALE_FACTOR = 0.3
_PAPER_INPUT_SIZE = 512

BUNDLE_OVERRIDES = ("autoencoder", "diffusion_model", "tokenizer", "unet_config", "autoencoder_config",
                    "cache_dir", "input_size", "scale_factor", "input_range", "prediction_type", "beta_start",
                    "beta_end", "beta_schedule", "num_train_timesteps", "name")


@dataclass(frozen=True)
class BundleSpec:
    """What a bundle folder says about its model; :meth:`summary` is the JSON-able view."""

    root: Path
    config: Path
    autoencoder: Definition
    unet: Definition
    scheduler: Definition | None
    inferer: Definition | None
    unet_config: MonaiUNetConfig
    autoencoder_config: MonaiAutoencoderConfig
    schedule: dict  # NoiseSchedule keyword arguments
    scale_factor: float
    input_size: int
    name: str
    checkpoints: dict[str, Path | None]
    sources: dict[str, str]  # value -> where it came from ("<file>: <key>" or "the paper's default")

    def summary(self) -> dict:
        """Definitions found, architecture, schedule, checkpoints: for ``groundiff doctor`` and results."""
        u, a = self.unet_config, self.autoencoder_config
        return {
            "config": str(self.config),
            "definitions": {role: None if d is None else {"key": d.key, "target": d.target}
                            for role, d in (("autoencoder", self.autoencoder), ("unet", self.unet),
                                            ("scheduler", self.scheduler), ("inferer", self.inferer))},
            "architecture": {
                "unet_channels": list(u.channels), "attention_levels": list(u.attention_levels),
                "heads": list(u.heads()), "cross_attention_dim": u.cross_attention_dim,
                "latent_channels": a.latent_channels, "autoencoder_channels": list(a.channels),
                "image_channels": a.in_channels,
            },
            "schedule": dict(self.schedule), "scale_factor": self.scale_factor, "input_size": self.input_size,
            "sources": dict(self.sources),
            "checkpoints": {k: None if v is None else str(v) for k, v in self.checkpoints.items()},
        }


# ------------------------------------------------------------------------------------ reading
def _arch(cls, definition: Definition, path: Path):
    try:
        cfg = cls.from_dict(definition.args)
        cfg.validate()
    except (TypeError, ValueError) as e:
        kind = type(e) if isinstance(e, ValueError) and type(e) is not ValueError else BundleError
        raise kind(f"{path}: {definition.key} ({definition.target}): {e}") from None
    return cfg


def _schedule(definition: Definition, path: Path) -> dict:
    """NoiseSchedule arguments from a MONAI/GenerativeModels scheduler definition (MONAI's defaults)."""
    where = f"{path}: {definition.key} ({definition.target})"
    args = dict(definition.args)
    name = args.pop("schedule", args.pop("beta_schedule", "linear_beta"))
    if name not in _SCHEDULES:
        raise BundleError(f"{where}: schedule {name!r} is not supported; groundiff's inversion knows "
                          "linear_beta and scaled_linear_beta")
    out = {"beta_schedule": _SCHEDULES[name],
           "num_train_timesteps": int(args.pop("num_train_timesteps", 1000)),
           "beta_start": float(args.pop("beta_start", 1e-4)), "beta_end": float(args.pop("beta_end", 2e-2)),
           "prediction_type": str(args.pop("prediction_type", "epsilon"))}
    if out["prediction_type"] not in ("epsilon", "v_prediction"):
        raise BundleError(f"{where}: prediction_type {out['prediction_type']!r} is not supported "
                          "(epsilon or v_prediction)")
    unknown = sorted(k for k in args if k not in _SAMPLING_ONLY)
    if unknown:
        raise BundleError(f"{where}: unknown scheduler argument(s) {unknown}")
    return out


def _input_size(resolver: Resolver, data: dict, unet_cfg: MonaiUNetConfig,
                ae_cfg: MonaiAutoencoderConfig) -> tuple[int, str] | None:
    """The image side from ``input_size``/``image_size``/``spatial_size`` or a ``latent_shape`` [C, H, W]."""
    for key in ("input_size", "image_size", "spatial_size"):
        if key in data:
            value = resolver.resolve(data[key], key)
            sides = value if isinstance(value, list) else [value]
            if len(sides) not in (1, 2) or len({str(s) for s in sides}) != 1:
                raise BundleError(f"{resolver.path}: {key}: groundiff needs one square side, got {value!r}")
            return resolver.number(key, sides[0], int), key
    if "latent_shape" in data:
        shape = resolver.resolve(data["latent_shape"], "latent_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and shape[1] == shape[2]):
            raise BundleError(f"{resolver.path}: latent_shape: groundiff needs [channels, side, side], got {shape!r}")
        return resolver.number("latent_shape", shape[1], int) * 2 ** (len(ae_cfg.channels) - 1), "latent_shape"
    return None


def _name(root: Path) -> str:
    try:
        meta = json.loads((root / "configs" / "metadata.json").read_text())
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"].strip():
            return meta["name"].strip()
    except (OSError, ValueError):
        pass
    return root.resolve().name or "monai-bundle"


def read_bundle(folder: str | Path, *, scale_factor: float | None = None, input_size: int | None = None) -> BundleSpec:
    """Read a bundle folder's definitions (no weights are read).

    ``scale_factor`` / ``input_size`` given here are taken as they are, so a bundle that computes
    them with an expression still loads. Raises ``FileNotFoundError`` when there is no config and
    :class:`BundleError` (a ``ValueError``) naming the file and the key for anything unreadable.
    """
    root = Path(folder).expanduser()
    config = find_bundle_config(root)
    if config is None:
        raise FileNotFoundError(f"{root}: no MONAI bundle config (looked for {', '.join(CONFIG_NAMES)})")
    data = parse_config(config)
    resolver = Resolver(data, config)
    defs = find_definitions(resolver)
    ae, unet, scheduler, inferer = defs.autoencoder, defs.unet, defs.scheduler, defs.inferer
    unet_cfg = _arch(MonaiUNetConfig, unet, config)
    # the middle attention is read from the checkpoint's keys (exact), not from the definition: the model
    # zoo's cxr bundle changed with_*_nonlocal_attn between versions while its weights stayed the same
    ae_cfg = replace(_arch(MonaiAutoencoderConfig, ae, config), with_encoder_nonlocal_attn=None,
                     with_decoder_nonlocal_attn=None)
    if unet_cfg.in_channels != ae_cfg.latent_channels:
        raise BundleError(f"{config}: {unet.key} has in_channels={unet_cfg.in_channels} but {ae.key} has "
                          f"latent_channels={ae_cfg.latent_channels}; the UNet must work on the autoencoder's latent")
    rel = config.relative_to(root).as_posix()
    sources: dict[str, str] = {}
    if scheduler is not None:
        schedule = _schedule(scheduler, config)
        sources["schedule"] = f"{rel}: {scheduler.key}"
    else:
        schedule = dict(_PAPER_SCHEDULE)
        sources["schedule"] = "the paper's default (no scheduler definition in the bundle)"
    if scale_factor is not None:
        sources["scale_factor"] = "given by the caller"
    elif inferer is not None and "scale_factor" in inferer.args:
        scale_factor = resolver.number(f"{inferer.key}#scale_factor", inferer.args["scale_factor"])
        sources["scale_factor"] = f"{rel}: {inferer.key}#scale_factor"
    elif "scale_factor" in data:
        scale_factor = resolver.number("scale_factor", data["scale_factor"])
        sources["scale_factor"] = f"{rel}: scale_factor"
    else:
        scale_factor = _PAPER_SCALE_FACTOR
        sources["scale_factor"] = "the paper's default (the bundle states none)"
    if input_size is not None:
        sources["input_size"] = "given by the caller"
    else:
        stated = _input_size(resolver, data, unet_cfg, ae_cfg)
        if stated is None:
            input_size = _PAPER_INPUT_SIZE
            sources["input_size"] = "the paper's default (the bundle states none)"
        else:
            input_size, key = stated
            sources["input_size"] = f"{rel}: {key}"
    checkpoints = {part: next((root / c for c in cands if (root / c).is_file()), None)
                   for part, cands in CHECKPOINTS.items()}
    return BundleSpec(root=root, config=config, autoencoder=ae, unet=unet, scheduler=scheduler, inferer=inferer,
                      unet_config=unet_cfg, autoencoder_config=ae_cfg, schedule=schedule,
                      scale_factor=float(scale_factor), input_size=int(input_size), name=_name(root),
                      checkpoints=checkpoints, sources=sources)


# ------------------------------------------------------------------------------------ loading
def _text_dirs(root: Path, text_encoder: str | Path | None, tokenizer: str | Path | None) -> tuple[Path, Path] | None:
    """(text_encoder dir, tokenizer dir): from ``text_encoder`` if given (else the bundle folder)."""
    from groundiff_core.models.loading.catalog import find_paper_files

    if text_encoder is not None:
        files = find_paper_files(None, text_encoder=text_encoder, tokenizer=tokenizer)
        if files.text_encoder is None or files.tokenizer is None:
            raise MissingWeightsError(
                f"--text-encoder {text_encoder}: no text encoder there; pass the Stable Diffusion 2.1 base folder "
                "that holds text_encoder/ and tokenizer/ (or the text_encoder folder itself)")
    else:
        files = find_paper_files(root, tokenizer=tokenizer)
    if files.text_encoder is None or files.tokenizer is None:
        return None
    return files.text_encoder, files.tokenizer


def load_bundle(folder: str | Path, *, text_encoder: str | Path | None = None, allow_download: bool = False,
                **overrides):
    """The :class:`~groundiff_core.models.ldm.LDM` of a MONAI bundle folder.

    The text encoder is ``folder/text_encoder`` + ``folder/tokenizer`` or comes from
    ``text_encoder`` (the SD 2.1 base folder). ``overrides`` (see ``BUNDLE_OVERRIDES``) win over
    what the bundle states. Raises :class:`MissingWeightsError` for a missing checkpoint or text
    encoder, :class:`BundleError` for an unreadable config.
    """
    from groundiff_core.models.loading.paper import load_paper_model

    root = Path(folder).expanduser()
    spec = read_bundle(root, scale_factor=overrides.get("scale_factor"), input_size=overrides.get("input_size"))
    paths = {}
    for part in ("autoencoder", "diffusion_model"):
        given = overrides.pop(part, None)
        paths[part] = Path(given).expanduser() if given is not None else spec.checkpoints[part]
        if paths[part] is None:
            role = spec.autoencoder if part == "autoencoder" else spec.unet
            raise MissingWeightsError(
                f"{root}: no {part} checkpoint (looked for {' and '.join(CHECKPOINTS[part])}; the weights of "
                f"{role.key} in {spec.config.relative_to(root).as_posix()})")
    text = _text_dirs(root, text_encoder, overrides.pop("tokenizer", None))
    if text is None and not allow_download:
        raise MissingWeightsError(
            f"{root}: no text encoder in the bundle folder (text_encoder/ + tokenizer/); pass --text-encoder DIR "
            "(load_model(..., text_encoder=DIR)), the Stable Diffusion 2.1 base folder holding text_encoder/ and "
            "tokenizer/")
    kwargs: dict[str, Any] = dict(unet_config=spec.unet_config, autoencoder_config=spec.autoencoder_config,
                                  input_size=spec.input_size, scale_factor=spec.scale_factor, name=spec.name,
                                  **spec.schedule)
    kwargs.update(overrides)
    te, tok = text if text is not None else (None, None)
    rel = spec.config.relative_to(root).as_posix()
    try:
        model = load_paper_model(root, text_encoder=te, tokenizer=tok, autoencoder=paths["autoencoder"],
                                 diffusion_model=paths["diffusion_model"], allow_download=allow_download, **kwargs)
    except StateDictMismatchError as e:  # the bundle's own definition does not describe its weights
        part = "autoencoder" if "autoencoder" in str(e).split(":")[0] else "diffusion_model"
        role = spec.autoencoder if part == "autoencoder" else spec.unet
        first = re.split(r"\. (?=[A-Z])", str(e).splitlines()[0])[0]
        raise StateDictMismatchError(f"{root / rel}: {role.key} ({role.target}) does not describe "
                                     f"{paths[part]}: {first}") from None
    model.info.update({
        "source": "monai-bundle", "bundle_config": rel,
        "bundle_definitions": ", ".join(f"{d.key}={d.target}" for d in (spec.autoencoder, spec.unet, spec.scheduler,
                                                                       spec.inferer) if d is not None),
        "bundle_sources": dict(spec.sources),
    })
    return model

