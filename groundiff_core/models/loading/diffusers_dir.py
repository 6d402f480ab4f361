"""Any latent diffusion model saved in the Stable Diffusion pipeline layout, read from disk only.

The layout is ``model_index.json`` plus one folder per component: ``unet/`` (a diffusers
``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``; absent for a pixel-space model),
``text_encoder/`` and ``tokenizer/`` (transformers classes named in ``model_index.json``) and
``scheduler/scheduler_config.json``. Stable Diffusion 1.x/2.x and chest X-ray models such as
RoentGen come this way. Facts not stored in weights are read from the configs: prediction type and
betas from the scheduler, the latent scale factor from the VAE (``scaling_factor``), the input size
from ``unet.sample_size`` times the VAE's downsampling; SD autoencoders take 3 channels in
``[-1, 1]``. Every ``from_pretrained`` call uses ``local_files_only=True``.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from groundiff_core.models.ldm import LDM, NoiseSchedule
from groundiff_core.models.loading.errors import StateDictMismatchError

__all__ = ["is_diffusers_dir", "load_diffusers_dir", "component_errors", "read_facts", "DIFFUSERS_OVERRIDES",
           "FACTS_KEY"]

DIFFUSERS_OVERRIDES = ("input_size", "scale_factor", "input_range", "image_channels", "prediction_type",
                       "name", "variant", "zero_padding")

FACTS_KEY = "_groundiff"  # model_index.json's block of facts that diffusers' configs have no field for
_FACT_CHECKS = {  # fact -> (is it valid, what it must be)
    "input_size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "image_channels": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "input_range": (lambda v: isinstance(v, list) and len(v) == 2
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) and v[0] < v[1],
                    "[low, high] with low < high"),
    "zero_padding": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
}

_ALLOWED_LIBRARIES = ("diffusers", "transformers")


def is_diffusers_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def _component(root: Path, index: dict, name: str, required: bool, variant: str | None):
    entry = index.get(name)
    folder = root / name
    if entry is None or entry == [None, None] or not folder.is_dir():
        if required:
            raise FileNotFoundError(
                f"{root} is not a complete diffusers model: component {name!r} is missing "
                f"(model_index.json lists {sorted(k for k in index if not k.startswith('_'))}; folder {folder} "
                f"{'exists' if folder.is_dir() else 'does not exist'})")
        return None
    library, cls_name = entry
    if library not in _ALLOWED_LIBRARIES:
        raise ValueError(f"{root}: component {name!r} comes from library {library!r}; "
                         f"groundiff loads components from {_ALLOWED_LIBRARIES} only")
    import importlib

    cls = getattr(importlib.import_module(library), cls_name, None)
    if cls is None:
        raise ValueError(f"{root}: component {name!r} names class {library}.{cls_name}, which this "
                         f"{library} version does not have")
    with component_errors(f"{name!r} ({library}.{cls_name})", folder):
        if library == "diffusers":
            from groundiff_core.models.loading.statedict import load_saved

            return load_saved(cls, folder, variant)
        return cls.from_pretrained(folder, local_files_only=True)


@contextmanager
def component_errors(what: str, folder: Path) -> Iterator[None]:
    """Turn the ways a component folder fails to load into one-line errors naming the folder.

    A missing file stays a ``FileNotFoundError``; weights that do not fit ``config.json`` (torch's
    multi-line "size mismatch" report) become :class:`StateDictMismatchError` quoting the first
    mismatch; a corrupt safetensors or pickle file, or an unreadable JSON or tokenizer file, becomes a
    ``ValueError``. Each message names ``folder`` and, where torch or safetensors says it, the tensor.
    """
    import pickle

    from safetensors import SafetensorError

    try:
        yield
    except StateDictMismatchError:
        raise
    except FileNotFoundError as e:
        raise FileNotFoundError(f"could not load {what} from {folder}: {_first_line(e)}") from None
    except (SafetensorError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"could not load {what} from {folder}: a weights file there is corrupt or "
                         f"truncated ({type(e).__name__}: {_first_line(e)})") from None
    except RuntimeError as e:
        text = str(e)
        mismatch = next((ln.strip() for ln in text.splitlines() if "size mismatch" in ln), None)
        if mismatch or "mismatched_sizes" in text or "state_dict" in text:
            raise StateDictMismatchError(
                f"could not load {what} from {folder}: its weights do not fit its config.json"
                + (f" ({mismatch})" if mismatch else "")) from None
        raise ValueError(f"could not load {what} from {folder}: {_first_line(e)}") from None
    except (OSError, ValueError) as e:
        shape = re.search(r"(\S+) expected shape (torch\.Size\(\[[^]]*\]\)), but got (torch\.Size\(\[[^]]*\]\))", str(e))
        if shape:  # diffusers' meta-device loading reports a tensor that does not fit the config so
            raise StateDictMismatchError(
                f"could not load {what} from {folder}: its weights do not fit its config.json (size mismatch "
                f"for {shape.group(1)}: the config gives {shape.group(2)}, the weights {shape.group(3)})") from None
        if "Unable to load weights from checkpoint file" in str(e):  # diffusers' word for an unreadable file
            raise ValueError(f"could not load {what} from {folder}: a weights file there is corrupt or "
                             f"truncated ({_first_line(e)})") from None
        raise ValueError(f"could not load {what} from {folder}: {_first_line(e)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def read_facts(root: Path, index: dict) -> dict:
    """The ``"_groundiff"`` facts of ``model_index.json`` (empty if none), checked one by one."""
    where = f"{root / 'model_index.json'}: {FACTS_KEY}"
    facts = index.get(FACTS_KEY, {})
    if not isinstance(facts, dict):
        raise ValueError(f"{where} must be a JSON object of facts, got {type(facts).__name__}")
    unknown = sorted(set(facts) - set(_FACT_CHECKS))
    if unknown:
        raise ValueError(f"{where}: unknown fact(s) {unknown}; known: {sorted(_FACT_CHECKS)}")
    for key, value in facts.items():
        valid, wanted = _FACT_CHECKS[key]
        if not valid(value):
            raise ValueError(f"{where}: {key} must be {wanted}, got {value!r}")
    return dict(facts)


def read_schedule(root: Path, prediction_type: str | None = None) -> NoiseSchedule:
    """The training noise schedule from ``scheduler/scheduler_config.json`` (diffusers' defaults where unset)."""
    path = root / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the noise schedule (betas, prediction type) is read from it")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if cfg.get("trained_betas") is not None:
        raise ValueError(f"{path}: explicit trained_betas are not supported (only linear/scaled_linear schedules)")
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{path}: rescale_betas_zero_snr=true is not supported by groundiff's noise schedule")
    schedule = cfg.get("beta_schedule", "linear")
    if schedule not in ("linear", "scaled_linear"):
        raise ValueError(f"{path}: beta_schedule {schedule!r} is not supported (allowed: linear, scaled_linear)")
    return NoiseSchedule(
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        beta_start=float(cfg.get("beta_start", 0.0001)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        beta_schedule=schedule,
        prediction_type=prediction_type or cfg.get("prediction_type", "epsilon"),
    )


def load_diffusers_dir(root: str | Path, *, input_size: int | None = None, scale_factor: float | None = None,
                       input_range: tuple[float, float] | None = None, image_channels: int | None = None,
                       prediction_type: str | None = None, name: str | None = None,
                       variant: str | None = None, zero_padding: bool | None = None) -> LDM:
    """An :class:`~groundiff_core.models.ldm.LDM` from a local SD-layout folder (offline).

    An argument left ``None`` comes from the folder's ``"_groundiff"`` facts, else from its configs
    (input size, channels, scale factor), else from Stable Diffusion's conventions (input range
    ``[-1, 1]``, no zero padding, the folder's name).
    """
    import torch
    from diffusers import UNet2DConditionModel

    root = Path(root).expanduser()
    try:
        index = json.loads((root / "model_index.json").read_text())
    except ValueError as e:
        raise ValueError(f"{root / 'model_index.json'} is not valid JSON ({e})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{root / 'model_index.json'} is not a JSON object of components")
    facts = read_facts(root, index)
    unet = _component(root, index, "unet", True, variant)
    if not isinstance(unet, UNet2DConditionModel):
        raise ValueError(f"{root}: the UNet is a {type(unet).__name__}; grounding needs a UNet2DConditionModel "
                         "(cross-attention to text)")
    vae = _component(root, index, "vae", False, variant)
    text_encoder = _component(root, index, "text_encoder", True, variant)
    tokenizer = _component(root, index, "tokenizer", True, variant)
    schedule = read_schedule(root, prediction_type)
    sample = unet.config.sample_size
    if isinstance(sample, (list, tuple)):
        if len(set(sample)) != 1:
            raise ValueError(f"{root}: non-square sample_size {sample}; pass input_size=...")
        sample = sample[0]
    if vae is not None:
        if getattr(vae.config, "shift_factor", None):
            raise ValueError(f"{root}: the VAE has a shift_factor ({vae.config.shift_factor}); not supported")
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        size = int(sample) * down
        factor = float(vae.config.scaling_factor)
        channels = int(vae.config.in_channels)
    else:
        size, factor, channels = int(sample), 1.0, int(unet.config.in_channels)
    hidden = getattr(text_encoder.config, "hidden_size", None)
    cross = unet.config.cross_attention_dim
    if hidden is not None and not isinstance(cross, (list, tuple)) and int(hidden) != int(cross):
        raise ValueError(f"{root}: the text encoder's hidden size ({hidden}) differs from the UNet's "
                         f"cross_attention_dim ({cross})")
    stated = {"input_size": input_size, "input_range": input_range, "image_channels": image_channels,
              "name": name, "zero_padding": zero_padding}
    given = {k: v for k, v in stated.items() if v is not None}
    facts = {**facts, **given}
    model = LDM(
        unet=unet, vae=vae, tokenizer=tokenizer, text_encoder=text_encoder, schedule=schedule,
        scale_factor=float(scale_factor if scale_factor is not None else factor),
        input_size=int(facts.get("input_size", size)),
        input_range=tuple(float(v) for v in facts.get("input_range", (-1.0, 1.0))),
        image_channels=int(facts.get("image_channels", channels)), name=str(facts.get("name", root.name)),
        zero_padding=bool(facts.get("zero_padding", False)),
        info={"source": "diffusers", "path": str(root), "pipeline": str(index.get("_class_name", ""))},
    )
    if "dtype" in facts:
        model.to(dtype=getattr(torch, facts["dtype"]))
    return model
