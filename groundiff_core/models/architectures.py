"""Builders for diffusers networks laid out like the paper's UNet, at any width.

The paper's UNet (MONAI chest X-ray LDM) has 3 resolution levels, 2 res blocks per level and
cross-attention at the two deeper levels: 11 cross-attention layers, of which 3, 4, 6, 7 (in
execution order) sit at the deepest resolution. :func:`paper_layout_unet` builds that layout as a
diffusers ``UNet2DConditionModel`` at any channel width, so the paper's preset applies unchanged to
the project's phantom model and to the tiny random models of the tests. :func:`tiny_ldm` assembles a
complete, randomly initialised :class:`~groundiff_core.models.ldm.LDM` for tests and examples.
"""

from __future__ import annotations

from typing import Sequence

import torch

from groundiff_core.models.ldm import LDM, NoiseSchedule
from groundiff_core.models.text import small_text_encoder, word_tokenizer

__all__ = ["paper_layout_unet", "small_vae", "tiny_ldm", "TINY_VOCABULARY"]


def paper_layout_unet(
    sample_size: int,
    channels: Sequence[int] = (32, 64, 64),
    in_channels: int = 3,
    cross_attention_dim: int = 64,
    heads: Sequence[int] = (1, 1, 1),
    norm_groups: int = 8,
    seed: int | None = 0,
):
    """A ``UNet2DConditionModel``: 3 levels, attention at levels 1 and 2, 2 res blocks per level.

    ``heads`` gives the number of attention heads per level (the paper uses one head per layer).
    """
    from diffusers import UNet2DConditionModel

    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(channels),
        layers_per_block=2,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(heads),
        norm_num_groups=norm_groups,
    )


def small_vae(channels: Sequence[int] = (16, 32, 32), in_channels: int = 1, latent_channels: int = 3,
              norm_groups: int = 8, seed: int | None = 0):
    """An ``AutoencoderKL`` that downsamples by ``2 ** (len(channels) - 1)``; like the paper's
    autoencoder it has no attention (``mid_block_add_attention=False``)."""
    from diffusers import AutoencoderKL

    if seed is not None:
        torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_groups,
        mid_block_add_attention=False,
        sample_size=64,
    )


TINY_VOCABULARY = (
    "small large left right bilateral pleural effusion cardiomegaly pneumothorax consolidation "
    "atelectasis edema opacity pneumonia lung upper lower base apex no mild moderate severe heart "
    "enlarged basal apical patchy focal lobe zone and with of the in plate-like ."
).split()  # its alphabet covers every phantom phrase (the tokenizer refuses characters it lacks)


def tiny_ldm(
    prediction_type: str = "v_prediction",
    image_size: int = 32,
    channels: Sequence[int] = (16, 32, 32),
    heads: Sequence[int] = (1, 1, 1),
    with_vae: bool = True,
    image_channels: int = 1,
    input_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> LDM:
    """A randomly initialised LDM with the paper's UNet layout, small enough for CPU tests.

    ``with_vae=False`` gives a pixel-space model (the UNet sees the image directly).
    """
    tok = word_tokenizer(TINY_VOCABULARY)
    text = small_text_encoder(len(tok), hidden_size=32, layers=1, heads=2, seed=seed)
    latent_channels = 3
    if with_vae:
        vae = small_vae(channels=(8, 16), in_channels=image_channels, latent_channels=latent_channels,
                        norm_groups=4, seed=seed + 1)
        latent = image_size // 2
        unet_in = latent_channels
    else:
        vae, latent, unet_in = None, image_size, image_channels
    unet = paper_layout_unet(latent, channels=channels, in_channels=unet_in, cross_attention_dim=32,
                             heads=heads, norm_groups=8, seed=seed + 2)
    return LDM(
        unet=unet, vae=vae, tokenizer=tok, text_encoder=text,
        schedule=NoiseSchedule(prediction_type=prediction_type),
        scale_factor=0.3 if with_vae else 1.0, input_size=image_size, input_range=input_range,
        image_channels=image_channels, name=f"tiny-{prediction_type}",
    )
