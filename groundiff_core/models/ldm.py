"""The model bundle: everything the grounding engine needs to know about one latent diffusion model.

A :class:`LDM` holds the frozen networks (a diffusers ``UNet2DConditionModel``, an optional
``AutoencoderKL``, a tokenizer and a text encoder) together with the facts that are not stored in
their weights: the training noise schedule and its prediction type, the latent scale factor, the
model's square input size, the intensity range its autoencoder expects and how many image channels
it takes. Loading real checkpoints lives in :mod:`groundiff_core.models.loading`; this module only defines
the bundle and its three encoders (text, image, latent decode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

__all__ = ["NoiseSchedule", "LDM", "PaperModelFacts", "PAPER_MODEL"]


@dataclass(frozen=True)
class NoiseSchedule:
    """The diffusion model's training noise schedule.

    Defaults are the paper's model (MONAI chest X-ray LDM): 1000 steps, "scaled linear" betas from
    0.0015 to 0.0205, v-prediction.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    beta_schedule: str = "scaled_linear"  # "scaled_linear" | "linear"
    prediction_type: str = "v_prediction"  # "v_prediction" | "epsilon"

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ValueError(f"beta_schedule must be 'scaled_linear' or 'linear', got {self.beta_schedule!r}")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ValueError(
                f"prediction_type must be 'v_prediction' or 'epsilon', got {self.prediction_type!r}"
            )

    def betas(self) -> torch.Tensor:
        """Betas as float64, shape ``[num_train_timesteps]``."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        return torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)

    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative product of ``1 - beta`` as float64, shape ``[num_train_timesteps]``."""
        return torch.cumprod(1.0 - self.betas(), dim=0)


@dataclass(frozen=True)
class PaperModelFacts:
    """What the paper's model (the MONAI chest X-ray LDM) needs besides its weights, in one place:
    every loader of it (the MONAI checkpoints, both MONAI bundles) takes its defaults from
    :data:`PAPER_MODEL`. ``input_range`` is the intensity range its autoencoder was trained on;
    ``name`` the model's name in results."""

    schedule: NoiseSchedule = NoiseSchedule()
    scale_factor: float = 0.3
    input_size: int = 512
    input_range: tuple[float, float] = (0.0, 1.0)
    name: str = "monai-cxr-ldm"


#: The paper's model.
PAPER_MODEL = PaperModelFacts()


@dataclass
class LDM:
    """A frozen latent (or pixel-space, ``vae=None``) diffusion model and the facts needed to use it.

    Attributes
    ----------
    unet : diffusers ``UNet2DConditionModel``
    vae : diffusers ``AutoencoderKL`` or ``None`` for a pixel-space model
    tokenizer, text_encoder : a transformers tokenizer with start/end tokens and a text model whose
        ``last_hidden_state`` is the conditioning
    schedule : the training noise schedule and prediction type
    scale_factor : latents are ``posterior_mean * scale_factor`` (0.3 for the paper's model)
    input_size : the square side, in pixels, that images are resized/cropped to (512 for the paper)
    input_range : intensity range the autoencoder expects: ``(0, 1)`` for the paper's model,
        ``(-1, 1)`` for Stable Diffusion
    image_channels : grayscale images are repeated to this many channels (1 paper, 3 SD)
    name : a short identity recorded in results files
    zero_padding : if True, the conditioning is zero at every position after the phrase's end token
        (the phantom model is trained that way, so the phrase can only reach the image through its
        own tokens; off for CLIP-conditioned models such as the paper's and Stable Diffusion)
    """

    unet: Any
    vae: Any | None
    tokenizer: Any
    text_encoder: Any
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    scale_factor: float = 0.3
    input_size: int = 512
    input_range: tuple[float, float] = (0.0, 1.0)
    image_channels: int = 1
    name: str = "unnamed"
    info: dict = field(default_factory=dict)
    zero_padding: bool = False

    def __post_init__(self) -> None:
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None:
                m.eval()
                m.requires_grad_(False)

    # ------------------------------------------------------------------ device handling
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "LDM":
        """Move every network (in place) and return ``self``."""
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.unet, self.vae, self.text_encoder):
            if m is not None and kwargs:
                m.to(**kwargs)
        return self

    @property
    def max_tokens(self) -> int:
        """Tokenizer context length, start and end tokens included (77 for CLIP)."""
        return int(getattr(self.tokenizer, "model_max_length", 77))

    @property
    def latent_size(self) -> int:
        """Side of the latent grid for an ``input_size`` image."""
        if self.vae is None:
            return self.input_size
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.input_size // down

    # ------------------------------------------------------------------ encoders
    def tokenize(self, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise padded to ``max_tokens`` (no truncation here: the engine checks lengths).

        Phrases the tokenizer cannot represent are refused (see :func:`groundiff_core.models.text.check_phrase`).
        """
        from groundiff_core.models.text import check_phrase

        for p in phrases:
            check_phrase(self.tokenizer, p)
        return self.tokenizer(
            list(phrases),
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            return_tensors="pt",
        )

    def phrase_token_count(self, phrase: str) -> int:
        """Number of tokens of ``phrase`` including the start and end tokens, before truncation.

        Refuses a phrase the tokenizer cannot represent (:func:`groundiff_core.models.text.check_phrase`).
        """
        from groundiff_core.models.text import check_phrase

        check_phrase(self.tokenizer, phrase)
        # verbose=False: no "sequence length is longer" warning ahead of the engine's own error
        return len(self.tokenizer(phrase, truncation=False, verbose=False)["input_ids"])

    @torch.no_grad()
    def encode_text(self, phrases: Sequence[str]) -> torch.Tensor:
        """Text conditioning ``[K, max_tokens, D]`` (last hidden state), on the UNet's device/dtype."""
        ids = self.tokenize(phrases)["input_ids"].to(self.text_encoder.device)
        out = self.text_encoder(input_ids=ids)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.zero_padding:
            hidden = hidden * self.content_mask(ids).unsqueeze(-1).to(hidden.dtype)
        return hidden.to(device=self.device, dtype=self.dtype)

    def content_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[K, L]`` bool: True up to and including each row's first end token."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        is_eos = (input_ids == eos).int()
        before = torch.cumsum(is_eos, dim=1) - is_eos  # end tokens strictly before each position
        return before == 0

    def _to_model_range(self, x01: torch.Tensor) -> torch.Tensor:
        lo, hi = self.input_range
        x = x01 * (hi - lo) + lo
        if x.shape[1] != self.image_channels:
            if x.shape[1] != 1:
                raise ValueError(
                    f"image has {x.shape[1]} channels; the model takes {self.image_channels} "
                    "(grayscale images are repeated to the model's channels)"
                )
            x = x.repeat(1, self.image_channels, 1, 1)
        return x

    @torch.no_grad()
    def encode_image(self, x01: torch.Tensor) -> torch.Tensor:
        """Latent ``z0`` for images ``[B, 1, S, S]`` in ``[0, 1]`` (S = ``input_size``).

        Uses the posterior mean (not a sample), times ``scale_factor``, as the paper does.
        """
        x = self._to_model_range(x01.to(device=self.device, dtype=self.dtype))
        if self.vae is None:
            return x
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(x.to(vae_dtype)).latent_dist
        return (dist.mean * self.scale_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 1, S, S]`` in ``[0, 1]`` (channel mean for RGB models) from latents."""
        if self.vae is None:
            x = z
        else:
            vae_dtype = next(self.vae.parameters()).dtype
            x = self.vae.decode((z / self.scale_factor).to(vae_dtype)).sample
        lo, hi = self.input_range
        x = (x.float() - lo) / (hi - lo)
        return x.mean(dim=1, keepdim=True).clamp(0, 1)

    def identity(self) -> dict:
        """A small JSON-able description, recorded next to every result."""
        n_params = sum(p.numel() for m in (self.unet, self.vae, self.text_encoder) if m is not None
                       for p in m.parameters())
        return {
            "name": self.name,
            "input_size": self.input_size,
            "input_range": list(self.input_range),
            "image_channels": self.image_channels,
            "scale_factor": self.scale_factor,
            "prediction_type": self.schedule.prediction_type,
            "zero_padding": self.zero_padding,
            "parameters": int(n_params),
            **{k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool))},
        }
