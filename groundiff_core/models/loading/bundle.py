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
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from groundiff_core.models.ldm import PAPER_MODEL
from groundiff_core.models.loading.bundle_config import (CONFIG_NAMES, WEIGHT_SUFFIXES, BundleError, Definition,
                                                         Definitions, Resolver, declared_weights, find_bundle_config,
                                                         find_definitions, parse_config)
from groundiff_core.models.loading.errors import MissingWeightsError, StateDictMismatchError
from groundiff_core.models.loading.monai_autoencoder import MonaiAutoencoderConfig
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig

__all__ = ["BundleError", "BundleSpec", "Considered", "Definition", "CONFIG_NAMES", "find_bundle_config",
           "read_bundle", "load_bundle", "MONAI_OVERRIDES", "role_of_state"]

# where the two published bundles keep their weights when a config does not say (GenerativeModels
# names them autoencoder.pth / diffusion_model.pth, the model-zoo port autoencoder.pt / model.pt)
CHECKPOINTS = {"autoencoder": ("models/autoencoder.pth", "models/autoencoder.pt", "autoencoder.pth", "autoencoder.pt"),
               "diffusion_model": ("models/diffusion_model.pth", "models/model.pt", "models/diffusion_model.pt",
                                   "diffusion_model.pth", "model.pt")}
_PART = {"autoencoder": "autoencoder", "unet": "diffusion_model"}

# MONAI / GenerativeModels schedule names -> groundiff's NoiseSchedule.beta_schedule
_SCHEDULES = {"linear_beta": "linear", "scaled_linear_beta": "scaled_linear", "linear": "linear",
              "scaled_linear": "scaled_linear"}
# scheduler arguments that only steer sampling, not the training noise schedule the inversion follows
_SAMPLING_ONLY = ("clip_sample", "clip_sample_min", "clip_sample_max", "set_alpha_to_one", "steps_offset",
                  "variance_type", "skip_prk_steps")
#: the options a MONAI model (a bundle or the paper's checkpoints) takes besides its source
MONAI_OVERRIDES = ("autoencoder", "diffusion_model", "tokenizer", "unet_config", "autoencoder_config",
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
    considered: tuple["Considered", ...] = ()  # every weight file looked at, taken or not, and why
    load_old: bool | None = None  # the config's "load_old": weights in the old GenerativeModels layout

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
            "considered": [c.summary() for c in self.considered], "load_old": self.load_old,
        }


@dataclass(frozen=True)
class Considered:
    """A weight file the loader looked at: what it would be, whether it was taken, and why (for the doctor)."""

    path: Path
    part: str | None  # "autoencoder", "diffusion_model" or None (not known)
    taken: bool
    why: str

    def summary(self) -> dict:
        return {"path": str(self.path), "part": self.part, "taken": self.taken, "why": self.why}


def role_of_state(keys) -> str | None:
    """"autoencoder" or "diffusion_model" from a MONAI state dict's tensor names, or ``None``.

    The UNet (``DiffusionModelUNet``) has a time embedding; the autoencoder (``AutoencoderKL``)
    an encoder and a decoder and no time embedding. Both key layouts (old GenerativeModels and
    MONAI core) share these names.
    """
    keys = list(keys)
    unet = any(k.startswith("time_embed.") for k in keys)
    ae = any(k.startswith("encoder.") for k in keys) and any(k.startswith("decoder.") for k in keys)
    if unet != ae:
        return "diffusion_model" if unet else "autoencoder"
    return None


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
        schedule = asdict(PAPER_MODEL.schedule)
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
        scale_factor = PAPER_MODEL.scale_factor
        sources["scale_factor"] = "the paper's default (the bundle states none)"
    if input_size is not None:
        sources["input_size"] = "given by the caller"
    else:
        stated = _input_size(resolver, data, unet_cfg, ae_cfg)
        if stated is None:
            input_size = PAPER_MODEL.input_size
            sources["input_size"] = "the paper's default (the bundle states none)"
        else:
            input_size, key = stated
            sources["input_size"] = f"{rel}: {key}"
    checkpoints, considered = _choose_checkpoints(root, resolver, defs, rel)
    load_old = None
    if "load_old" in data:
        flag = resolver.text(data["load_old"], "load_old") if isinstance(data["load_old"], str) else data["load_old"]
        load_old = str(flag).strip().lower() in ("1", "true", "yes")
    return BundleSpec(root=root, config=config, autoencoder=ae, unet=unet, scheduler=scheduler, inferer=inferer,
                      unet_config=unet_cfg, autoencoder_config=ae_cfg, schedule=schedule,
                      scale_factor=float(scale_factor), input_size=int(input_size), name=_name(root),
                      checkpoints=checkpoints, sources=sources, considered=tuple(considered), load_old=load_old)


def _choose_checkpoints(root: Path, resolver: Resolver, defs: Definitions,
                        rel: str) -> tuple[dict[str, Path | None], list[Considered]]:
    """The autoencoder and UNet weight files: as the config names them, else the published names, else by keys.

    Candidates, in order: the files the config names (with the role its references give), the
    names the two published bundles use, then any other weight file in the folder or ``models/``.
    A candidate whose role is not known is told apart by its tensor names (read memory-mapped).
    Nothing is written; every file looked at is returned with the reason it was taken or left.
    """
    from groundiff_core.models.loading.checkpoints import read_state_dict

    candidates: list[tuple[Path, str | None, str]] = []  # (path, part, where it came from)
    for d in declared_weights(resolver, defs):
        path = Path(d.path) if Path(d.path).is_absolute() else root / d.path
        candidates.append((path, None if d.role is None else _PART[d.role], f"named by {rel}: {d.key} ({d.via})"))
    for part, names in CHECKPOINTS.items():
        candidates += [(root / n, part, "a published bundle's name for it") for n in names]
    for folder in (root / "models", root):
        if folder.is_dir():
            candidates += [(f, None, "a weight file in the folder") for f in sorted(folder.iterdir())
                           if f.suffix.lower() in WEIGHT_SUFFIXES]
    seen: set[Path] = set()
    unique = []
    for path, part, origin in candidates:
        key = Path(os.path.normpath(path))
        if key not in seen:
            seen.add(key)
            unique.append((key, part, origin))
    chosen: dict[str, Path | None] = {"autoencoder": None, "diffusion_model": None}
    notes: dict[Path, tuple[str | None, str]] = {}
    for path, part, origin in unique:
        if not path.is_file():
            if path.exists():
                notes[path] = (part, f"{origin}; not a regular file")
            elif origin.startswith("named by"):
                notes[path] = (part, f"{origin}; not there")
            continue
        if part is None and None in chosen.values():  # tell it by its tensors, only while a part is unfilled
            try:
                part = role_of_state(read_state_dict(path, mmap=True))
                origin += "; its tensors say " + (part or "neither network")
            except (ValueError, OSError) as e:
                notes[path] = (None, f"{origin}; unreadable: {str(e).splitlines()[0][:160]}")
                continue
        if part is None:
            notes[path] = (None, origin + ("; both parts already found" if None not in chosen.values() else ""))
        elif chosen[part] is None:
            chosen[part] = path
            notes[path] = (part, f"taken: {origin}")
        else:
            notes[path] = (part, f"{origin}; left: {chosen[part].relative_to(root) if chosen[part].is_relative_to(root) else chosen[part]} was taken first")
    considered = [Considered(path=p, part=part, taken=chosen.get(part) == p if part else False, why=why)
                  for p, (part, why) in notes.items()]
    return chosen, considered


def missing_checkpoint_message(spec: BundleSpec, part: str) -> str:
    """Which files were looked at for ``part``, and where the published weights are (checksums.json)."""
    from groundiff_core.models.loading.catalog import published_weights

    role = spec.autoencoder if part == "autoencoder" else spec.unet
    rel = spec.config.relative_to(spec.root).as_posix()
    looked = [c for c in spec.considered if c.part in (part, None)]
    lines = [f"{spec.root}: no {part} checkpoint for {role.key} ({rel}). Looked at:"]
    lines += [f"  {c.path}: {c.why}" for c in looked] or ["  no weight file in the folder or its models/"]
    lines.append("  and the published names " + ", ".join(CHECKPOINTS[part]) + " (none there)")
    lines.append(published_weights(part))
    return "\n".join(lines)


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
    ``text_encoder`` (the SD 2.1 base folder). ``overrides`` (see ``MONAI_OVERRIDES``) win over
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
            raise MissingWeightsError(missing_checkpoint_message(spec, part))
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

