"""MONAI model-zoo bundle folders: the architecture from the bundle's config, the weights from ``models/``.

A bundle carries its own definition (``configs/inference.json`` or ``.yaml``) beside its weights
(``models/autoencoder.pth``, ``models/diffusion_model.pth``), so loading one needs no out-of-band
knowledge. :func:`read_bundle` finds, by their ``_target_`` class and never by key name,

- the autoencoder: ``AutoencoderKL`` of ``generative.networks.nets`` (MONAI GenerativeModels) or
  ``monai.networks.nets`` (MONAI core >= 1.4),
- the diffusion UNet: ``DiffusionModelUNet`` of the same packages,
- when present, the training noise scheduler (``DDPMScheduler``, ``DDIMScheduler``,
  ``PNDMScheduler`` of ``generative.networks.schedulers`` or ``monai.networks.schedulers``) and a
  ``LatentDiffusionInferer`` (``generative.inferers`` / ``monai.inferers``) for the latent scale factor.

Argument values may be ``"@key"`` references to other entries (``#`` separates nested keys, as in
MONAI); those are resolved. Python expressions (``"$..."``) and macros (``"%..."``) are not run:
an argument that needs one is an error naming the file and the key. What a bundle does not state
falls back to the paper's model (METHOD.md): the scheduler (v-prediction, scaled-linear betas
0.0015..0.0205), the latent scale factor 0.3 and the 512 px input; :attr:`BundleSpec.sources` says
where each value came from. Whether the autoencoder has a middle attention block
(``with_*_nonlocal_attn``) is read from the checkpoint's tensors, as for the paper's model, because
the model zoo's CXR bundle changed that setting between versions. The checkpoints are converted by the same code as the paper's
(:mod:`.paper`, :mod:`.monai_unet`, :mod:`.monai_autoencoder`), old GenerativeModels or MONAI core layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from groundiff_core.models.loading.errors import MissingWeightsError, StateDictMismatchError
from groundiff_core.models.loading.monai_autoencoder import MonaiAutoencoderConfig
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig

__all__ = ["BundleError", "BundleSpec", "Definition", "CONFIG_NAMES", "find_bundle_config", "read_bundle",
           "load_bundle", "BUNDLE_OVERRIDES"]

CONFIG_NAMES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml",
                "inference.json", "inference.yaml", "inference.yml")
CHECKPOINTS = {"autoencoder": ("models/autoencoder.pth", "autoencoder.pth"),
               "diffusion_model": ("models/diffusion_model.pth", "diffusion_model.pth")}

_NETS = ("generative.networks.nets", "monai.networks.nets")
_SCHEDULERS = ("generative.networks.schedulers", "monai.networks.schedulers")
_INFERERS = ("generative.inferers", "monai.inferers")
_MONAI_PACKAGES = ("generative.", "monai.")
# role -> (packages, accepted class names, what the error calls it)
_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "autoencoder": (_NETS, ("AutoencoderKL",), "autoencoder"),
    "unet": (_NETS, ("DiffusionModelUNet",), "diffusion UNet"),
    "scheduler": (_SCHEDULERS, ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler"), "noise scheduler"),
    "inferer": (_INFERERS, ("LatentDiffusionInferer",), "latent diffusion inferer"),
}
# bundle syntax inside a definition that is not a constructor argument
_BUNDLE_KEYS = ("_target_", "_requires_", "_disabled_", "_desc_", "_mode_")
# MONAI / GenerativeModels schedule names -> groundiff's NoiseSchedule.beta_schedule
_SCHEDULES = {"linear_beta": "linear", "scaled_linear_beta": "scaled_linear", "linear": "linear",
              "scaled_linear": "scaled_linear"}
# scheduler arguments that only steer sampling, not the training noise schedule the inversion follows
_SAMPLING_ONLY = ("clip_sample", "clip_sample_min", "clip_sample_max", "set_alpha_to_one", "steps_offset",
                  "variance_type", "skip_prk_steps")
_REFERENCE = re.compile(r"\$?@([A-Za-z0-9_]+(?:(?:#|::)[A-Za-z0-9_]+)*)")  # "@key", "@a#b", "$@key"
_PAPER_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0205,
                       beta_schedule="scaled_linear", prediction_type="v_prediction")
_PAPER_SCALE_FACTOR = 0.3
_PAPER_INPUT_SIZE = 512

BUNDLE_OVERRIDES = ("autoencoder", "diffusion_model", "tokenizer", "unet_config", "autoencoder_config",
                    "cache_dir", "input_size", "scale_factor", "input_range", "prediction_type", "beta_start",
                    "beta_end", "beta_schedule", "num_train_timesteps", "name")


class BundleError(ValueError):
    """A bundle config that cannot be read; the message names the file and the key."""


@dataclass(frozen=True)
class Definition:
    """One ``_target_`` definition of a bundle: where it is, its class, its resolved arguments."""

    key: str  # MONAI id, nested keys joined by '#', e.g. "diffusion_def" or "inferer#scheduler"
    target: str
    args: dict = field(default_factory=dict)


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


def find_bundle_config(folder: str | Path) -> Path | None:
    """The bundle's inference config in ``folder`` (``configs/`` first, then the top), or ``None``."""
    root = Path(folder).expanduser()
    return next((root / name for name in CONFIG_NAMES if (root / name).is_file()), None)


# ------------------------------------------------------------------------------------ reading
def _parse(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the bundle config ({e.strerror or e})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise BundleError(f"{path}: reading a YAML bundle config needs PyYAML (pip install pyyaml)") from None
            data = yaml.safe_load(text)
    except BundleError:
        raise
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: the parser's message says where
        raise BundleError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: the bundle config must be a mapping of keys, got {type(data).__name__}")
    return data


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, dict]]:
    """Every dict with a string ``_target_`` (not disabled), with its MONAI id."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str) and node.get("_disabled_") not in (True, "true", "True", 1):
            yield key, node
        for k, v in node.items():
            yield from _walk(v, f"{key}#{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}#{i}")


def _role_of(target: str) -> str | None:
    module, _, cls = target.rpartition(".")
    for role, (packages, classes, _) in _ROLES.items():
        if cls in classes and any(module == p or module.startswith(p + ".") for p in packages):
            return role
    return None


class _Resolver:
    """Resolves ``"@id"`` (and the plain-reference expression ``"$@id"``) within one config."""

    def __init__(self, data: dict, path: Path):
        self.data, self.path = data, path

    def lookup(self, ref: str, where: str) -> Any:
        node: Any = self.data
        for part in ref.replace("::", "#").split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise BundleError(f"{self.path}: {where}: the reference '@{ref}' names no entry of the config")
        return node

    def resolve(self, value: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}#{k}", seen) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{where}#{i}", seen) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        m = _REFERENCE.fullmatch(value)
        if m is not None:
            ref = m.group(1)
            if ref in seen:
                raise BundleError(f"{self.path}: {where}: circular reference '@{ref}'")
            return self.resolve(self.lookup(ref, where), where, (*seen, ref))
        if value.startswith(("$", "%", "@")):
            raise BundleError(
                f"{self.path}: {where}: cannot resolve {value!r} (groundiff reads plain values and '@key' "
                "references, and runs no '$' expressions or '%' macros); write the value itself there")
        return value


def _definition(resolver: _Resolver, key: str, node: dict) -> Definition:
    args = {k: resolver.resolve(v, f"{key}#{k}") for k, v in node.items() if k not in _BUNDLE_KEYS}
    return Definition(key=key, target=node["_target_"], args=args)


def _find(found: dict[str, list[tuple[str, dict]]], role: str, path: Path, others: list[tuple[str, str]],
          required: bool) -> tuple[str, dict] | None:
    hits = found.get(role, [])
    if len(hits) > 1:
        keys = ", ".join(f"{k} ({n['_target_']})" for k, n in hits)
        raise BundleError(f"{path}: more than one {_ROLES[role][2]} definition: {keys}; keep one")
    if hits:
        return hits[0]
    if not required:
        return None
    packages, classes, what = _ROLES[role]
    wanted = " or ".join(f"{p}.{c}" for p in packages for c in classes)
    seen = "; ".join(f"{k}: {t}" for k, t in others) or "none"
    raise BundleError(f"{path}: no {what} definition (a '_target_' of {wanted}); MONAI definitions found: {seen}")


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


def _number(resolver: _Resolver, key: str, value: Any, kind=float):
    value = resolver.resolve(value, key)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise BundleError(f"{resolver.path}: {key}: expected a number, got {value!r}") from None


def _input_size(resolver: _Resolver, data: dict, unet_cfg: MonaiUNetConfig,
                ae_cfg: MonaiAutoencoderConfig) -> tuple[int, str] | None:
    """The image side from ``input_size``/``image_size``/``spatial_size`` or a ``latent_shape`` [C, H, W]."""
    for key in ("input_size", "image_size", "spatial_size"):
        if key in data:
            value = resolver.resolve(data[key], key)
            sides = value if isinstance(value, list) else [value]
            if len(sides) not in (1, 2) or len({str(s) for s in sides}) != 1:
                raise BundleError(f"{resolver.path}: {key}: groundiff needs one square side, got {value!r}")
            return _number(resolver, key, sides[0], int), key
    if "latent_shape" in data:
        shape = resolver.resolve(data["latent_shape"], "latent_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and shape[1] == shape[2]):
            raise BundleError(f"{resolver.path}: latent_shape: groundiff needs [channels, side, side], got {shape!r}")
        return _number(resolver, "latent_shape", shape[1], int) * 2 ** (len(ae_cfg.channels) - 1), "latent_shape"
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
    data = _parse(config)
    resolver = _Resolver(data, config)
    found: dict[str, list[tuple[str, dict]]] = {}
    others: list[tuple[str, str]] = []
    for key, node in _walk(data):
        role = _role_of(node["_target_"])
        if role is not None:
            found.setdefault(role, []).append((key, node))
        elif node["_target_"].startswith(_MONAI_PACKAGES):
            others.append((key, node["_target_"]))
    ae = _definition(resolver, *_find(found, "autoencoder", config, others, True))
    unet = _definition(resolver, *_find(found, "unet", config, others, True))
    hit = _find(found, "scheduler", config, others, False)
    scheduler = None if hit is None else _definition(resolver, *hit)
    hit = _find(found, "inferer", config, others, False)
    inferer = None
    if hit is not None:  # only its scale factor matters; its scheduler is found on its own above
        key, node = hit
        inferer = Definition(key, node["_target_"], {k: v for k, v in node.items() if k == "scale_factor"})
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
        scale_factor = _number(resolver, f"{inferer.key}#scale_factor", inferer.args["scale_factor"])
        sources["scale_factor"] = f"{rel}: {inferer.key}#scale_factor"
    elif "scale_factor" in data:
        scale_factor = _number(resolver, "scale_factor", data["scale_factor"])
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

