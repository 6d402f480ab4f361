"""The phantom LDM: architecture, save and load.

A small latent diffusion model laid out like the paper's (3 UNet levels, cross-attention at the two
deeper ones, 2 res blocks per level: 11 cross-attention layers, so the paper's layers 3, 4, 6, 7 are
the deepest ones), v-prediction with the paper's noise schedule, input range [0, 1], one image
channel, 128x128 input, a KL autoencoder with 2x downsampling (latent 3x64x64) and a small CLIP text
encoder trained from scratch on the phantom reports with a closed-vocabulary tokenizer.

Why a 64x64 latent: it gives the UNet the paper's attention geometry. The paper's model (512x512
input, 8x autoencoder) reads layers 3, 4, 6, 7 on a 16x16 grid and the others on 32x32; so does this
one. An earlier 32x32-latent phantom model put the paper's layers on an 8x8 grid, coarser than most
findings, and the paper's preset grounded poorly on it. The UNet is narrow (16/32/64 channels) so
that the 4x larger grid still trains in 72 minutes on two CPU cores.

Why a text encoder trained here rather than a frozen pretrained one: no pretrained CLIP weights can
be installed offline from a package registry, and a frozen general-purpose encoder would not know
the phantom's words any better than a random one; training a small CLIP text model jointly with the
UNet is what the paper's setting amounts to (a text encoder aligned with the image model's data).

The shipped weights live in ``groundiff_core/phantom/weights/``, a Stable Diffusion pipeline
folder as diffusers writes one: ``model_index.json``, ``unet/``, ``vae/`` (its ``scaling_factor``
is the latent scale factor), ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` (a
``DDPMScheduler``: the training noise schedule and v-prediction). What diffusers' configs have no
field for (input range [0, 1], one channel, 128 px, ``zero_padding``, computing in float32) sits in
``model_index.json`` under ``"_groundiff"``, where groundiff's diffusers-folder loader reads it for
any model; so ``load_model(<that folder>)`` and ``load_model("phantom")`` give the same model.
``phantom.json`` is the training record (recipe, run, what it measured), which ``MODEL_CARD.md`` is
written from; loading does not read it but for the step count. Weights are stored in float16 (to
keep the package small) and loaded as float32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from groundiff_core.models.architectures import paper_layout_unet, small_vae
from groundiff_core.models.loading.diffusers_dir import FACTS_KEY, is_diffusers_dir, load_diffusers_dir
from groundiff_core.models.ldm import LDM, NoiseSchedule
from groundiff_core.util.quiet import quiet_libraries
from groundiff_core.models.text import small_text_encoder, word_tokenizer
from groundiff_core.phantom.generator import SIZE, vocabulary

__all__ = ["PhantomSpec", "build_phantom", "noise_scheduler", "save_phantom", "load_phantom", "training_record",
           "WEIGHTS_DIR", "RECORD"]

WEIGHTS_DIR = Path(__file__).with_name("weights")
RECORD = "phantom.json"  # the training record inside a phantom model folder


@dataclass(frozen=True)
class PhantomSpec:
    """Architecture of the phantom LDM."""

    image_size: int = SIZE
    vae_channels: tuple[int, ...] = (16, 32)      # one halving: 128 -> 64
    latent_channels: int = 3
    unet_channels: tuple[int, ...] = (16, 32, 64)  # levels at 64, 32 and 16 (paper's layers: 16x16)
    unet_heads: tuple[int, ...] = (1, 2, 4)
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_phantom(spec: PhantomSpec = PhantomSpec(), seed: int = 0, scale_factor: float = 1.0) -> LDM:
    """A randomly initialised phantom LDM (the starting point of training)."""
    tok = word_tokenizer(vocabulary())
    text = small_text_encoder(len(tok), hidden_size=spec.text_hidden, layers=spec.text_layers,
                              heads=spec.text_heads, seed=seed)
    vae = small_vae(spec.vae_channels, in_channels=1, latent_channels=spec.latent_channels,
                    norm_groups=8, seed=seed + 1)
    unet = paper_layout_unet(spec.latent_size, channels=spec.unet_channels,
                             in_channels=spec.latent_channels, cross_attention_dim=spec.text_hidden,
                             heads=spec.unet_heads, norm_groups=16, seed=seed + 2)
    ldm = LDM(unet=unet, vae=vae, tokenizer=tok, text_encoder=text,
              schedule=NoiseSchedule(), scale_factor=scale_factor, input_size=spec.image_size,
              input_range=(0.0, 1.0), image_channels=1, name="phantom", zero_padding=True)
    for m in (unet, vae, text):  # training starts from here
        m.train()
        m.requires_grad_(True)
    return ldm


def noise_scheduler(schedule: NoiseSchedule):
    """The training noise schedule as a diffusers ``DDPMScheduler`` (training adds noise with it,
    the model folder ships its config).

    Two settings matter only to a diffusers pipeline sampling from the folder: ``clip_sample`` is off
    (latents are not bounded to [-1, 1]) and ``steps_offset`` is 1, as Stable Diffusion's pipelines expect.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler(**asdict(schedule), clip_sample=False, steps_offset=1)


def _library_class(obj) -> list[str]:
    """``[library, class]`` as ``model_index.json`` names a component."""
    return [type(obj).__module__.split(".")[0], type(obj).__name__]


def _model_index(ldm: LDM, scheduler) -> dict:
    """``model_index.json`` of a Stable Diffusion pipeline folder, with groundiff's facts under ``"_groundiff"``."""
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": _library_class(scheduler), "text_encoder": _library_class(ldm.text_encoder),
        "tokenizer": _library_class(ldm.tokenizer), "unet": _library_class(ldm.unet),
        "vae": _library_class(ldm.vae),
        FACTS_KEY: {"name": ldm.name, "input_size": ldm.input_size, "input_range": list(ldm.input_range),
                    "image_channels": ldm.image_channels, "zero_padding": ldm.zero_padding, "dtype": "float32"},
    }


def _write_pipeline_configs(ldm: LDM, out: Path) -> None:
    """``scheduler/scheduler_config.json`` and ``model_index.json`` of ``ldm`` into ``out``."""
    scheduler = noise_scheduler(ldm.schedule)
    scheduler.save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps(_model_index(ldm, scheduler), indent=2, sort_keys=True) + "\n")


def save_phantom(ldm: LDM, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write the model as the shipped folder is laid out (float16 safetensors, configs, training record).

    ``extra`` (the training run's settings) goes into the training record ``phantom.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", ldm.unet), ("vae", ldm.vae), ("text_encoder", ldm.text_encoder)):
        half = _half_copy(module)
        if name == "vae":  # diffusers' place for the latent scale factor
            half.register_to_config(scaling_factor=float(ldm.scale_factor))
        half.save_pretrained(out / name, safe_serialization=True)
    ldm.tokenizer.save_pretrained(out / "tokenizer")
    _write_pipeline_configs(ldm, out)
    meta = {
        "name": ldm.name,
        "schedule": asdict(ldm.schedule),
        "scale_factor": ldm.scale_factor,
        "input_size": ldm.input_size,
        "input_range": list(ldm.input_range),
        "image_channels": ldm.image_channels,
        "zero_padding": ldm.zero_padding,
        **(extra or {}),
    }
    (out / RECORD).write_text(json.dumps(meta, indent=2))
    return out


def _half_copy(module):
    import copy

    m = copy.deepcopy(module).to("cpu", torch.float16)
    return m


def training_record(path: str | Path | None = None) -> dict:
    """The training record (``phantom.json``) of a phantom model folder; ``{}`` if it has none."""
    file = (Path(path) if path is not None else WEIGHTS_DIR) / RECORD
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None


def load_phantom(path: str | Path | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> LDM:
    """Load the phantom LDM shipped with the package (or from ``path``), offline, in seconds.

    The folder is read by the generic diffusers-folder loader; only the provenance (``info``) is the
    phantom's own.
    """
    root = Path(path) if path is not None else WEIGHTS_DIR
    if not is_diffusers_dir(root):
        raise FileNotFoundError(
            f"phantom model not found: {root / 'model_index.json'} is missing. The weights ship inside the package "
            "(groundiff_core/phantom/weights); retrain them with `python -m groundiff_core.phantom.train`."
        )
    with quiet_libraries():
        ldm = load_diffusers_dir(root)
    ldm.info = {"source": "phantom", "weights": str(root), "train_steps": training_record(root).get("unet_steps", -1)}
    ldm.to(device=device, dtype=dtype)
    return ldm

