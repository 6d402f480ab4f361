"""The paper's model: MONAI's chest X-ray LDM plus the SD 2.1 base text encoder, as an :class:`LDM`.

Inputs are the two MONAI checkpoints (``autoencoder.pth``, ``diffusion_model.pth``, old
GenerativeModels or MONAI core layout) and a local copy of ``text_encoder/`` and ``tokenizer/`` of
``stabilityai/stable-diffusion-2-1-base`` (see :mod:`.catalog` for where they are looked for). The
checkpoints are converted once into diffusers models (:mod:`.monai_unet`, :mod:`.monai_autoencoder`)
and cached with ``save_pretrained`` in the user's cache, ``~/.cache/groundiff/converted/<key>/``
(``$GROUNDIFF_CACHE_DIR``, or ``cache_dir=`` / ``--cache-dir``), never beside the checkpoints: a
model store may be shared or read-only, and a 1 GB copy must not appear in it unannounced. The key
is a hash of the checkpoints' fingerprints (size and a hash of their ends) and the settings, so
later loads read the cache (seconds) only when it was made from the same files with the same
settings; its place and size are said once on stderr when it is written. ``cache_dir=False``
(``--no-cache``) converts in memory and writes nothing. Everything not stored in the weights comes from ``METHOD.md``: v-prediction,
"scaled linear" betas 0.0015..0.0205 over 1000 steps, latent scale 0.3, input range [0, 1],
512x512, one channel. Every setting can be overridden.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Mapping

from tqdm.auto import tqdm

from groundiff_core.models.ldm import LDM, PAPER_MODEL, NoiseSchedule
from groundiff_core.models.loading.catalog import PaperFiles, cache_root, checksums, default_paper_dir, find_paper_files, missing_paper_message
from groundiff_core.models.loading.checkpoints import read_state_dict
from groundiff_core.util.fingerprint import file_fingerprint
from groundiff_core.models.loading.errors import MissingWeightsError
from groundiff_core.models.loading.hub import download_snapshot
from groundiff_core.models.loading.monai_autoencoder import MonaiAutoencoderConfig, MonaiAutoencoderKL, convert_autoencoder
from groundiff_core.models.loading.monai_unet import MonaiUNetConfig, convert_unet
from groundiff_core.models.loading.statedict import load_saved, set_groupnorm_eps

__all__ = ["load_paper_model", "convert_paper_checkpoints", "cached_conversion", "CONVERTER_VERSION"]

CONVERTER_VERSION = 1
RECORD = "conversion.json"



def _architecture(value, cls, option: str, monai_class: str):
    """``value`` as a ``cls`` (a Monai*Config): None gives the paper's, a dict its arguments."""
    if value is None:
        return cls.paper()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_dict(value)
    raise ValueError(f"{option} must be a {cls.__name__} or a dict of {monai_class} arguments, "
                     f"got {type(value).__name__}")


def _unet_config(value) -> MonaiUNetConfig:
    return _architecture(value, MonaiUNetConfig, "unet_config", "DiffusionModelUNet")


def _autoencoder_config(value) -> MonaiAutoencoderConfig:
    return _architecture(value, MonaiAutoencoderConfig, "autoencoder_config", "AutoencoderKL")


def _user_cache() -> Path:
    base = os.environ.get("GROUNDIFF_CACHE_DIR")
    if base:
        return Path(base).expanduser()
    return cache_root() / "converted"


def _cache_folder(cache_dir: str | Path | None | bool, request: dict) -> Path | None:
    """Where the conversion of ``request`` is cached: ``cache_dir/<key>`` (default the user cache), or None."""
    if cache_dir is False:
        return None
    if cache_dir is True or cache_dir is None:
        base = _user_cache()
    elif isinstance(cache_dir, (str, Path)) and str(cache_dir):
        base = Path(cache_dir).expanduser()
    else:
        raise ValueError(f"cache_dir must be a folder, None (the user cache) or False (no cache), got {cache_dir!r}")
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return base / key


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def cached_conversion(files: PaperFiles, cache_dir: str | Path | None = None) -> Path | None:
    """The cache folder holding a conversion of exactly these checkpoints (any settings), or ``None``."""
    if files.diffusion_model is None or files.autoencoder is None:
        return None
    base = Path(cache_dir).expanduser() if cache_dir else _user_cache()
    want = {"diffusion_model": file_fingerprint(files.diffusion_model), "autoencoder": file_fingerprint(files.autoencoder)}
    for record_path in sorted(base.glob(f"*/{RECORD}")):
        record = _read_record(record_path.parent)
        if isinstance(record, dict) and record.get("request", {}).get("sources") == _normalised(want):
            return record_path.parent
    return None


def _normalised(obj):
    return json.loads(json.dumps(obj))


def _read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _load_cached(folder: Path, unet_cfg: MonaiUNetConfig, ae_cfg: MonaiAutoencoderConfig):
    from diffusers import UNet2DConditionModel

    unet = load_saved(UNet2DConditionModel, folder / "unet")
    vae = load_saved(MonaiAutoencoderKL, folder / "vae")
    set_groupnorm_eps(unet, unet_cfg.norm_eps)
    set_groupnorm_eps(vae, ae_cfg.norm_eps)
    return unet.eval(), vae.eval()


def _save_cache(folder: Path, unet, vae, record: dict) -> bool:
    """Write the cache atomically (a temporary sibling folder, then a rename); False if not writable."""
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        unet.save_pretrained(tmp / "unet")
        vae.save_pretrained(tmp / "vae")
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        (tmp / "README.txt").write_text(
            "diffusers copies of the MONAI checkpoints named in conversion.json, written by groundiff_core.models.loading "
            "so that later loads are fast. Safe to delete: they are rebuilt from the .pth files when needed.\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def convert_paper_checkpoints(files: PaperFiles, unet_config: MonaiUNetConfig | None = None,
                              autoencoder_config: MonaiAutoencoderConfig | None = None, *,
                              input_size: int = PAPER_MODEL.input_size, scale_factor: float = PAPER_MODEL.scale_factor,
                              cache_dir: str | Path | None | bool = None):
    """``(unet, vae, info)``: the two MONAI checkpoints as diffusers models, from the cache when it is current.

    ``cache_dir``: the cache's base folder (``None``: the user cache; ``False``: none). ``info`` holds
    the checkpoints' fingerprints and, under ``"conversion"``, where the cache is (``None`` if none
    was written) and whether it was used.
    """
    unet_cfg = unet_config or MonaiUNetConfig.paper()
    ae_cfg = autoencoder_config or MonaiAutoencoderConfig.paper()
    unet_cfg.validate()
    ae_cfg.validate()
    latent = int(input_size) // 2 ** (len(ae_cfg.channels) - 1)
    sources = {"diffusion_model": file_fingerprint(files.diffusion_model), "autoencoder": file_fingerprint(files.autoencoder)}
    request = _normalised({
        "converter": CONVERTER_VERSION, "sources": sources, "unet_config": unet_cfg.to_dict(),
        "autoencoder_config": ae_cfg.to_dict(), "latent_size": latent, "input_size": int(input_size),
        "scale_factor": float(scale_factor),
    })
    folder = _cache_folder(cache_dir, request)
    if folder is not None:
        record = _read_record(folder)
        if record is not None and record.get("request") == request:
            resolved = MonaiAutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in record["autoencoder_resolved"].items()})
            unet, vae = _load_cached(folder, unet_cfg, resolved)
            return unet, vae, _info(sources, resolved, str(folder), True)
    quiet = os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true")  # --no-progress, read now
    with tqdm(total=3, desc="converting the MONAI checkpoints to diffusers (once)", leave=False, disable=quiet) as bar:
        unet = convert_unet(read_state_dict(files.diffusion_model), unet_cfg, sample_size=latent)
        bar.update()
        vae, resolved = convert_autoencoder(read_state_dict(files.autoencoder), ae_cfg, sample_size=int(input_size),
                                            scaling_factor=float(scale_factor))
        bar.update()
        record = {"request": request, "autoencoder_resolved": resolved.to_dict(),
                  "note": "made by groundiff_core.models.loading.paper; see monai_unet.py / monai_autoencoder.py"}
        written = folder if folder is not None and _save_cache(folder, unet, vae, record) else None
        bar.update()
    if written is not None:
        print(f"groundiff: converted the MONAI checkpoints once; the diffusers copy is cached in {written} "
              f"({_folder_size(written) / 1e6:.0f} MB) for later loads (--cache-dir DIR to put it elsewhere, "
              "--no-cache to convert in memory only)", file=sys.stderr)
    elif folder is not None:
        print(f"groundiff: could not write the conversion cache {folder} (not writable?); converted in memory, "
              "so the next load converts again (--cache-dir DIR to choose a writable folder)", file=sys.stderr)
    return unet, vae, _info(sources, resolved, None if written is None else str(written), False)


def _info(sources: dict, resolved: MonaiAutoencoderConfig, cache: str | None, from_cache: bool) -> dict:
    """Stable facts (recorded with results) plus, nested, where the conversion came from this time."""
    return {
        "diffusion_model_fingerprint": sources["diffusion_model"]["head_tail_sha256"][:16],
        "autoencoder_fingerprint": sources["autoencoder"]["head_tail_sha256"][:16],
        "autoencoder_middle_attention": bool(resolved.with_encoder_nonlocal_attn),
        "conversion": {"cache": cache, "from_cache": from_cache},
    }


def load_paper_model(root: str | Path | None = None, *, text_encoder: str | Path | None = None,
                     tokenizer: str | Path | None = None, autoencoder: str | Path | None = None,
                     diffusion_model: str | Path | None = None, unet_config=None, autoencoder_config=None,
                     cache_dir: str | Path | None | bool = None, input_size: int = PAPER_MODEL.input_size,
                     scale_factor: float = PAPER_MODEL.scale_factor,
                     input_range: tuple[float, float] = PAPER_MODEL.input_range,
                     prediction_type: str = PAPER_MODEL.schedule.prediction_type,
                     beta_start: float = PAPER_MODEL.schedule.beta_start, beta_end: float = PAPER_MODEL.schedule.beta_end,
                     beta_schedule: str = PAPER_MODEL.schedule.beta_schedule,
                     num_train_timesteps: int = PAPER_MODEL.schedule.num_train_timesteps, name: str = PAPER_MODEL.name,
                     allow_download: bool = False) -> LDM:
    """The paper's model from local files (``root`` default: ``$GROUNDIFF_PAPER_DIR``); the facts
    its weights do not hold default to :data:`~groundiff_core.models.ldm.PAPER_MODEL`.

    Raises :class:`MissingWeightsError` listing what is missing, where to get it and where to put it.
    With ``allow_download=True`` a missing text encoder/tokenizer is fetched from the Hugging Face Hub
    into ``root/stable-diffusion-2-1-base`` (the MONAI checkpoints are never downloaded).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(root).expanduser() if root is not None else default_paper_dir()
    where = dict(autoencoder=autoencoder, diffusion_model=diffusion_model, text_encoder=text_encoder,
                 tokenizer=tokenizer)
    files = find_paper_files(root, **where)
    if allow_download and (files.text_encoder is None or files.tokenizer is None) and text_encoder is None:
        repo = checksums()["paper"]["text_encoder"]["repository"]
        download_snapshot(repo, root / repo.split("/")[-1], ["text_encoder/*", "tokenizer/*"])
        files = find_paper_files(root, **where)
    if files.missing():
        raise MissingWeightsError(missing_paper_message(files, root))
    unet_cfg = _unet_config(unet_config)
    ae_cfg = _autoencoder_config(autoencoder_config)
    unet, vae, info = convert_paper_checkpoints(files, unet_cfg, ae_cfg, input_size=input_size,
                                                scale_factor=scale_factor, cache_dir=cache_dir)
    try:
        text = CLIPTextModel.from_pretrained(files.text_encoder, local_files_only=True)
        tok = CLIPTokenizer.from_pretrained(files.tokenizer, local_files_only=True)
    except OSError as e:
        raise MissingWeightsError(f"could not load the text encoder/tokenizer from {files.text_encoder} / "
                                  f"{files.tokenizer}: {e}") from None
    if int(text.config.hidden_size) != unet_cfg.cross_attention_dim:
        raise ValueError(
            f"the text encoder in {files.text_encoder} has hidden size {text.config.hidden_size}, but the UNet "
            f"attends to {unet_cfg.cross_attention_dim}-dim text (the paper uses the SD 2.1 base encoder, 1024)")
    schedule = NoiseSchedule(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             beta_schedule=beta_schedule, prediction_type=prediction_type)
    return LDM(
        unet=unet, vae=vae, tokenizer=tok, text_encoder=text, schedule=schedule, scale_factor=float(scale_factor),
        input_size=int(input_size), input_range=tuple(float(v) for v in input_range),
        image_channels=int(ae_cfg.in_channels), name=name,
        info={"source": "monai", "root": str(root), "autoencoder": str(files.autoencoder),
              "diffusion_model": str(files.diffusion_model), "text_encoder": str(files.text_encoder),
              **info},
    )
