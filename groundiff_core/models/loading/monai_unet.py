"""MONAI ``DiffusionModelUNet`` checkpoints as diffusers ``UNet2DConditionModel``: exact, no MONAI needed.

The two networks are the same computation with different names, so a conversion is a configuration
translation plus a key map. What was checked, piece by piece (MONAI 1.6.1 vs diffusers 0.42.1; the
equivalence tests in ``tests/test_loading_monai.py`` prove it numerically):

- Time embedding: MONAI's ``cat(cos, sin)`` of ``t * exp(-ln(10000) * i / half)`` is diffusers'
  ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``; ``time_embed.0/2`` are
  ``time_embedding.linear_1/2`` (width ``4 * channels[0]`` in both).
- Res blocks: GroupNorm, SiLU, conv, ``+ Linear(SiLU(temb))``, GroupNorm, SiLU, conv, 1x1 skip
  when the width changes; identical to ``ResnetBlock2D`` (``skip_connection`` = ``conv_shortcut``).
- Down/upsampling: stride-2 3x3 conv with padding 1 (``downsample_padding=1``); nearest x2 then 3x3
  conv. MONAI's ``resblock_updown=True`` (res blocks with average pooling) has no counterpart in
  diffusers' cross-attention blocks and is refused.
- ``SpatialTransformer`` = ``Transformer2DModel`` with ``use_linear_projection=False``: GroupNorm,
  1x1 conv ``proj_in``, one ``BasicTransformerBlock`` per layer (LayerNorm eps 1e-5, self-attention,
  cross-attention, GEGLU feed-forward of width 4x with the value half first), 1x1 conv ``proj_out``.
  diffusers fixes this GroupNorm's eps at 1e-6 (MONAI: ``norm_eps``); for another ``norm_eps`` the
  converted model's GroupNorms are set to it after loading.
- Heads: MONAI gives channels per head, diffusers' ``attention_head_dim`` is (despite its name) the
  number of heads per level: ``heads = channels // num_head_channels`` (the paper: 512/512 and
  768/768, one head). Heads are split head-major in both; the scale is ``head_dim ** -0.5``; q/k/v
  have no bias, the output projection has one (``out_proj`` = ``to_out.0``). ``upcast_attention``
  maps to itself; flash attention is a kernel choice, not a weight, and is ignored.
- Layer order: MONAI's down blocks, middle block, up blocks are diffusers' ``down_blocks``,
  ``mid_block``, ``up_blocks`` with the same counts (``num_res_blocks + 1`` res blocks going up,
  skip connections popped in the same order), so cross-attention layer ``i`` is the same layer.

Checkpoint layouts: the old MONAI GenerativeModels layout (what the published checkpoints use) and
the MONAI core (>= 1.4) layout differ only in names (``attn*.to_out.0`` vs ``attn*.out_proj``,
``upsampler.conv`` vs ``upsampler.postconv``); :func:`detect_layout` tells them apart. MONAI core's
``use_combined_linear=True`` (one ``qkv`` matrix) is split into q, k, v.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from groundiff_core.models.loading.errors import StateDictMismatchError, UnsupportedArchitectureError
from groundiff_core.models.loading.monai_args import KeyLayout, MonaiArgs, rename
from groundiff_core.models.loading.statedict import Entry, expected_shapes, fill, materialise, meta_model, set_groupnorm_eps

__all__ = ["MonaiUNetConfig", "convert_unet", "unet_state_for_diffusers", "detect_layout", "diffusers_to_monai_key"]


def _tuple(value, n: int, kind=int) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(kind(v) for v in value)
    return (kind(value),) * n


@dataclass(frozen=True)
class MonaiUNetConfig(MonaiArgs):
    """The constructor arguments of MONAI's 2-D ``DiffusionModelUNet`` that shape its weights.

    Defaults are the paper's model (the ``diffusion_def`` of the MONAI model zoo bundle
    ``cxr_image_synthesis_latent_diffusion_model``). ``num_res_blocks`` and ``num_head_channels``
    may be given as one int for every level.
    """

    in_channels: int = 3
    out_channels: int = 3
    channels: tuple[int, ...] = (256, 512, 768)
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_res_blocks: tuple[int, ...] | int = 2
    num_head_channels: tuple[int, ...] | int = (0, 512, 768)
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    cross_attention_dim: int = 1024
    transformer_num_layers: int = 1
    with_conditioning: bool = True
    resblock_updown: bool = False
    upcast_attention: bool = False
    num_class_embeds: int | None = None

    def __post_init__(self) -> None:
        n = len(self.channels)
        object.__setattr__(self, "channels", _tuple(self.channels, n))
        object.__setattr__(self, "attention_levels", _tuple(self.attention_levels, n, bool))
        object.__setattr__(self, "num_res_blocks", _tuple(self.num_res_blocks, n))
        object.__setattr__(self, "num_head_channels", _tuple(self.num_head_channels, n))

    @classmethod
    def paper(cls) -> "MonaiUNetConfig":
        """The paper's UNet: channels (256, 512, 768), attention at levels 1-2, one head per layer."""
        return cls()

    # How the MONAI / GenerativeModels constructor arguments are read (see :class:`.monai_args.MonaiArgs`).
    _NETWORK = "DiffusionModelUNet"
    _NOT_2D = "only 2-D UNets can be grounded"
    _IGNORED = ("_target_", "spatial_dims", "use_flash_attention", "dropout_cattn", "use_combined_linear")

    def heads(self) -> tuple[int, ...]:
        """Attention heads per level (1 where a level has no attention)."""
        out = []
        for i, (ch, att, nhc) in enumerate(zip(self.channels, self.attention_levels, self.num_head_channels)):
            needs = att or i == len(self.channels) - 1  # the middle block uses the last level's setting
            out.append(ch // nhc if needs else 1)
        return tuple(out)

    def validate(self) -> None:
        """Raise :class:`UnsupportedArchitectureError` for settings without an exact diffusers equivalent."""
        n = len(self.channels)
        if not (len(self.attention_levels) == len(self.num_res_blocks) == len(self.num_head_channels) == n):
            raise ValueError("channels, attention_levels, num_res_blocks and num_head_channels need one entry per level")
        if not self.with_conditioning:
            raise UnsupportedArchitectureError(
                "with_conditioning=False: a UNet without cross-attention cannot be grounded by text")
        if self.resblock_updown:
            raise UnsupportedArchitectureError(
                "resblock_updown=True (res blocks with average pooling as down/upsamplers) has no counterpart in "
                "diffusers' CrossAttnDownBlock2D/CrossAttnUpBlock2D, so it cannot be converted exactly")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}")
        for i, (ch, att, nhc) in enumerate(zip(self.channels, self.attention_levels, self.num_head_channels)):
            if att or i == n - 1:
                if nhc <= 0 or ch % nhc:
                    raise UnsupportedArchitectureError(
                        f"level {i}: num_head_channels={nhc} must divide its {ch} channels (MONAI would then use "
                        "fewer inner channels than the block's width, which diffusers cannot express)")

    def to_diffusers(self, sample_size: int = 64) -> dict:
        """The ``UNet2DConditionModel`` configuration computing the same function."""
        self.validate()
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels))
        return dict(
            sample_size=int(sample_size),
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=down,
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=up,
            block_out_channels=self.channels,
            layers_per_block=self.num_res_blocks,
            downsample_padding=1,
            mid_block_scale_factor=1,
            act_fn="silu",
            norm_num_groups=self.norm_num_groups,
            norm_eps=self.norm_eps,
            cross_attention_dim=self.cross_attention_dim,
            transformer_layers_per_block=self.transformer_num_layers,
            attention_head_dim=self.heads(),
            use_linear_projection=False,
            upcast_attention=self.upcast_attention,
            num_class_embeds=self.num_class_embeds,
            resnet_time_scale_shift="default",
        )


# diffusers key -> MONAI core key, applied in order (each rule once).
_TO_MONAI = [
    (r"^conv_in\.", "conv_in.conv."),
    (r"^time_embedding\.linear_1\.", "time_embed.0."),
    (r"^time_embedding\.linear_2\.", "time_embed.2."),
    (r"^conv_norm_out\.", "out.0."),
    (r"^conv_out\.", "out.2.conv."),
    (r"^mid_block\.resnets\.0\.", "middle_block.resnet_1."),
    (r"^mid_block\.resnets\.1\.", "middle_block.resnet_2."),
    (r"^mid_block\.attentions\.0\.", "middle_block.attention."),
    (r"\.downsamplers\.0\.conv\.", ".downsampler.op.conv."),
    (r"\.upsamplers\.0\.conv\.", ".upsampler.postconv.conv."),
    (r"\.(conv1|conv2)\.(weight|bias)$", r".\1.conv.\2"),
    (r"\.conv_shortcut\.", ".skip_connection.conv."),
    (r"\.(proj_in|proj_out)\.", r".\1.conv."),
    (r"\.to_out\.0\.", ".out_proj."),
    (r"\.ff\.net\.0\.proj\.", ".ff.linear1."),
    (r"\.ff\.net\.2\.", ".ff.linear2."),
]

LAYOUT = KeyLayout(
    "UNet",
    to_core=((r"(transformer_blocks\.\d+\.attn[12])\.to_out\.0\.", r"\1.out_proj."),
             (r"\.upsampler\.conv\.conv\.", ".upsampler.postconv.conv.")),
    to_old=((r"(transformer_blocks\.\d+\.attn[12])\.out_proj\.", r"\1.to_out.0."),
            (r"\.upsampler\.postconv\.conv\.", ".upsampler.conv.conv.")),
    core_marks=(".postconv.", ".out_proj."))
detect_layout = LAYOUT.detect


def diffusers_to_monai_key(key: str) -> str:
    """The MONAI core (>= 1.4) name of a diffusers ``UNet2DConditionModel`` state-dict key."""
    return rename(key, _TO_MONAI)


def _qkv_slice(i: int):
    def build(tensors, shape):
        (qkv,) = tensors
        if qkv.shape[0] != 3 * shape[0]:
            raise StateDictMismatchError(f"combined qkv of shape {tuple(qkv.shape)} does not split into 3 x {tuple(shape)}")
        return qkv[i * shape[0]:(i + 1) * shape[0]].clone()  # own storage: safetensors refuses shared ones
    return build


def unet_state_for_diffusers(state: Mapping[str, torch.Tensor], config: MonaiUNetConfig | None = None,
                             sample_size: int = 64) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(diffusers config, diffusers state dict)`` for a MONAI ``DiffusionModelUNet`` state dict.

    Works on meta tensors too (shapes only), which lets tests check the full-size paper layout.
    """
    from diffusers import UNet2DConditionModel

    config = config or MonaiUNetConfig.paper()
    diffusers_config = config.to_diffusers(sample_size)
    expected = expected_shapes(meta_model(UNet2DConditionModel, diffusers_config))
    core, names = LAYOUT.normalise(state)
    entries = []
    for target in expected:
        source = diffusers_to_monai_key(target)
        m = re.match(r"(.*\.attn1)\.to_([qkv])\.weight$", source)
        if m and source not in core and f"{m.group(1)}.qkv.weight" in core:
            entries.append(Entry(target, (f"{m.group(1)}.qkv.weight",), _qkv_slice("qkv".index(m.group(2)))))
        else:
            entries.append(Entry(target, (source,)))
    hint = (f"The checkpoint does not match the configured MONAI DiffusionModelUNet ({_short(config)}); pass the "
            "configuration it was trained with (e.g. unet_config=<the bundle's diffusion_def>).")
    converted = materialise(entries, expected, core, what="diffusion model (MONAI DiffusionModelUNet)",
                            hint=hint, original_names=names)
    return diffusers_config, converted


def convert_unet(state: Mapping[str, torch.Tensor], config: MonaiUNetConfig | None = None,
                 sample_size: int = 64):
    """A diffusers ``UNet2DConditionModel`` holding the weights of a MONAI ``DiffusionModelUNet``.

    ``state`` is the checkpoint's state dict in either layout; ``config`` the MONAI constructor
    arguments (default: the paper's); ``sample_size`` the latent side recorded in the diffusers config.
    Raises :class:`StateDictMismatchError` naming the first tensor that does not fit.
    """
    from diffusers import UNet2DConditionModel

    config = config or MonaiUNetConfig.paper()
    diffusers_config, converted = unet_state_for_diffusers(state, config, sample_size)
    model = fill(meta_model(UNet2DConditionModel, diffusers_config), converted)
    set_groupnorm_eps(model, config.norm_eps)
    return model


def _short(config) -> str:
    d = config.to_dict()
    keep = ("channels", "attention_levels", "num_res_blocks", "num_head_channels", "cross_attention_dim")
    return ", ".join(f"{k}={d[k]}" for k in keep if k in d)
