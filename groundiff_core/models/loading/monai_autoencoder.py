"""MONAI ``AutoencoderKL`` checkpoints as a diffusers ``AutoencoderKL`` (sub)class: exact, no MONAI needed.

The building blocks match (MONAI 1.6.1 vs diffusers 0.42.1): res blocks (GroupNorm, SiLU, 3x3 conv,
twice, 1x1 ``nin_shortcut`` = ``conv_shortcut``), downsampling by zero-padding right/bottom then a
stride-2 3x3 conv without padding (diffusers' ``downsample_padding=0``), upsampling by nearest x2 then
a 3x3 conv, single-head spatial self-attention with biased q/k/v and output projection (GroupNorm
first, residual added), and the posterior ``mean, logvar`` clamped to [-30, 20]. Four differences in
structure have exact remedies (the equivalence tests in ``tests/test_loading_monai.py`` prove them):

1. **No activation before the last conv.** MONAI's encoder and decoder end in GroupNorm then conv;
   diffusers' put a SiLU between them (``conv_act``), and no configuration removes it. So the
   converted autoencoder is a :class:`MonaiAutoencoderKL`: diffusers' ``AutoencoderKL`` with
   ``final_activation=False`` (``conv_act`` is the identity), saved and loaded with
   ``save_pretrained``/``from_pretrained`` like any diffusers model (``_class_name`` in its
   ``config.json`` says which class to load it with).
2. **Latent head.** MONAI's encoder ends in a 3x3 conv to ``latent`` channels followed by two 1x1
   convs (``quant_conv_mu``, ``quant_conv_log_sigma``); diffusers' ends in a 3x3 conv to
   ``2 * latent`` channels followed by one 1x1 ``quant_conv`` on all of them. We duplicate MONAI's
   3x3 conv (both halves compute the same ``h``) and make ``quant_conv`` block-diagonal
   ``[[W_mu, 0], [0, W_sigma]]``: the mean half is ``W_mu h + b_mu`` exactly as in MONAI.
3. **Middle block.** MONAI has a middle block (res block, attention, res block) only with
   ``with_*_nonlocal_attn=True``, otherwise nothing; diffusers always has the two res blocks and adds
   the attention when ``mid_block_add_attention`` (one flag for encoder and decoder). Where MONAI has
   no such block we fill diffusers' with identities: a res block whose last conv is zero returns its
   input unchanged (``x + 0``), and an attention whose output projection is zero returns its residual.
   The paper's autoencoder has no attention at all (``mid_block_add_attention=False``) and gets two
   identity res blocks in each middle block.
4. **Decoder depth.** MONAI's decoder has ``num_res_blocks`` res blocks per level, diffusers'
   ``layers_per_block + 1``; the extra (last) one of each level is an identity block as above.

Identity blocks cost a little compute (mostly in the decoder, which grounding uses only to show
images) and nothing in accuracy: ``x + 0`` is exactly ``x`` in floating point. diffusers fixes the autoencoder's GroupNorm eps at 1e-6 (the
paper's value); another ``norm_eps`` is set on the converted model after loading.

Old GenerativeModels checkpoints name attention tensors ``to_q``/``proj_attn`` directly on the block
and the upsampling conv ``conv`` (MONAI core: ``attn.to_q``/``attn.out_proj``, ``postconv``). We
follow MONAI core's ``load_old_state_dict``: ``proj_attn`` becomes the output projection, and an old
attention without one gets the identity projection. (Some GenerativeModels versions defined
``proj_attn`` without applying it; the paper's autoencoder has no attention, so this does not touch
the reproduction.)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config

from groundiff_core.models.ldm import PAPER_MODEL
from groundiff_core.models.loading.errors import StateDictMismatchError, UnsupportedArchitectureError
from groundiff_core.models.loading.monai_args import KeyLayout, MonaiArgs
from groundiff_core.models.loading.statedict import Entry, expected_shapes, fill, materialise, meta_model, set_groupnorm_eps

__all__ = ["MonaiAutoencoderConfig", "MonaiAutoencoderKL", "convert_autoencoder", "autoencoder_state_for_diffusers",
           "detect_layout", "detect_nonlocal_attention"]


class MonaiAutoencoderKL(AutoencoderKL):
    """diffusers ``AutoencoderKL``; with ``final_activation=False`` (MONAI's layout) the encoder and the
    decoder apply no SiLU between their last GroupNorm and their last conv. Otherwise identical."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
                 up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
                 block_out_channels: tuple[int, ...] = (64,), layers_per_block: int = 1, act_fn: str = "silu",
                 latent_channels: int = 4, norm_num_groups: int = 32, sample_size: int = 32,
                 scaling_factor: float = 0.18215, shift_factor: float | None = None,
                 latents_mean: tuple[float] | None = None, latents_std: tuple[float] | None = None,
                 force_upcast: bool = True, use_quant_conv: bool = True, use_post_quant_conv: bool = True,
                 mid_block_add_attention: bool = True, final_activation: bool = True):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
            norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
            shift_factor=shift_factor, latents_mean=latents_mean, latents_std=latents_std,
            force_upcast=force_upcast, use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention)
        if not final_activation:
            self.encoder.conv_act = torch.nn.Identity()
            self.decoder.conv_act = torch.nn.Identity()


@dataclass(frozen=True)
class MonaiAutoencoderConfig(MonaiArgs):
    """The constructor arguments of MONAI's 2-D ``AutoencoderKL`` that shape its weights.

    Defaults are the paper's autoencoder (``autoencoder_def`` of the MONAI bundle
    ``cxr_image_synthesis_latent_diffusion_model``). ``with_*_nonlocal_attn=None`` reads the middle
    attention's presence from the checkpoint (the bundle's configuration changed between versions).
    """

    in_channels: int = 1
    out_channels: int = 1
    channels: tuple[int, ...] = (64, 128, 128, 128)
    num_res_blocks: tuple[int, ...] | int = 2
    attention_levels: tuple[bool, ...] = (False, False, False, False)
    latent_channels: int = 3
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    with_encoder_nonlocal_attn: bool | None = None
    with_decoder_nonlocal_attn: bool | None = None
    use_convtranspose: bool = False

    def __post_init__(self) -> None:
        n = len(self.channels)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        nrb = self.num_res_blocks
        object.__setattr__(self, "num_res_blocks",
                           tuple(int(v) for v in nrb) if isinstance(nrb, (list, tuple)) else (int(nrb),) * n)
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))

    @classmethod
    def paper(cls) -> "MonaiAutoencoderConfig":
        """The paper's autoencoder: channels (64, 128, 128, 128), 2 res blocks, latent 3, no level attention."""
        return cls()

    # How the MONAI / GenerativeModels constructor arguments are read (see :class:`.monai_args.MonaiArgs`).
    _NETWORK = "AutoencoderKL"
    _NOT_2D = "only 2-D autoencoders are supported"
    _IGNORED = ("_target_", "spatial_dims", "use_flash_attention", "use_checkpointing", "use_checkpoint",
                "use_combined_linear")

    def validate(self) -> None:
        n = len(self.channels)
        if not (len(self.num_res_blocks) == len(self.attention_levels) == n):
            raise ValueError("channels, num_res_blocks and attention_levels need one entry per level")
        if len(set(self.num_res_blocks)) != 1:
            raise UnsupportedArchitectureError(
                f"num_res_blocks={self.num_res_blocks}: diffusers' AutoencoderKL has one layers_per_block for all levels")
        if self.use_convtranspose:
            raise UnsupportedArchitectureError(
                "use_convtranspose=True (transposed-conv upsampling) has no counterpart in diffusers' decoder")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must be multiples of norm_num_groups={self.norm_num_groups}")

    def resolved(self, state: Mapping[str, torch.Tensor]) -> "MonaiAutoencoderConfig":
        """This configuration with ``with_*_nonlocal_attn`` read from ``state`` where it is ``None``."""
        enc, dec = detect_nonlocal_attention(state, self)
        kw = asdict(self)
        if self.with_encoder_nonlocal_attn is None:
            kw["with_encoder_nonlocal_attn"] = enc
        if self.with_decoder_nonlocal_attn is None:
            kw["with_decoder_nonlocal_attn"] = dec
        return type(self)(**kw)

    def to_diffusers(self, sample_size: int = PAPER_MODEL.input_size, scaling_factor: float = PAPER_MODEL.scale_factor) -> dict:
        """The :class:`MonaiAutoencoderKL` configuration (``with_*_nonlocal_attn`` must be resolved)."""
        self.validate()
        if self.with_encoder_nonlocal_attn is None or self.with_decoder_nonlocal_attn is None:
            raise ValueError("resolve with_encoder/decoder_nonlocal_attn first (MonaiAutoencoderConfig.resolved)")
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in self.attention_levels),
            up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D"
                                 for a in reversed(self.attention_levels)),
            block_out_channels=self.channels,
            layers_per_block=self.num_res_blocks[0],
            act_fn="silu",
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=int(sample_size),
            scaling_factor=float(scaling_factor),
            use_quant_conv=True,
            use_post_quant_conv=True,
            mid_block_add_attention=bool(self.with_encoder_nonlocal_attn or self.with_decoder_nonlocal_attn),
            force_upcast=False,
            final_activation=False,
        )


# ----------------------------------------------------------------------------------- layouts
_BLOCK = r"^((?:encoder|decoder)\.blocks\.\d+)"
LAYOUT = KeyLayout(
    "autoencoder",
    to_core=((r"^(decoder\.blocks\.\d+)\.conv\.conv\.", r"\1.postconv.conv."),
             (_BLOCK + r"\.(to_q|to_k|to_v)\.(weight|bias)$", r"\1.attn.\2.\3"),
             (_BLOCK + r"\.proj_attn\.(weight|bias)$", r"\1.attn.out_proj.\2")),
    to_old=((r"^(decoder\.blocks\.\d+)\.postconv\.conv\.", r"\1.conv.conv."),
            (r"\.attn\.(to_q|to_k|to_v)\.", r".\1."),
            (r"\.attn\.out_proj\.", ".proj_attn.")),
    core_marks=(".postconv.", ".attn.to_q."))
detect_layout = LAYOUT.detect


def _to_core(state: Mapping[str, torch.Tensor]):
    """:meth:`KeyLayout.normalise`, and an old attention without ``proj_attn`` given the identity
    projection (as MONAI core's ``load_old_state_dict`` does)."""
    layout = LAYOUT.detect(state)
    core, old_name = LAYOUT.normalise(state, layout)
    if layout == "monai":  # a core checkpoint without out_proj is incomplete: refused later
        return core, old_name
    for key in list(core):
        if key.endswith(".attn.to_q.weight"):
            block = key[: -len(".to_q.weight")]
            if f"{block}.out_proj.weight" not in core:
                w = core[key]
                core[f"{block}.out_proj.weight"] = torch.eye(w.shape[0], dtype=w.dtype)
                core[f"{block}.out_proj.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    return core, old_name


def _attention_blocks(state: Mapping[str, torch.Tensor], part: str) -> set[int]:
    pat = re.compile(rf"^{part}\.blocks\.(\d+)\.(?:attn\.)?to_q\.weight$")
    return {int(m.group(1)) for k in state if (m := pat.match(k))}


def detect_nonlocal_attention(state: Mapping[str, torch.Tensor], config: MonaiAutoencoderConfig) -> tuple[bool, bool]:
    """Whether encoder and decoder have MONAI's middle ("non-local") attention block, from the keys."""
    per_level = sum(r for r, a in zip(config.num_res_blocks, config.attention_levels) if a)
    return (len(_attention_blocks(state, "encoder")) > per_level,
            len(_attention_blocks(state, "decoder")) > per_level)


# ----------------------------------------------------------------------------------- key map
_RES = {"norm1": "norm1", "conv1": "conv1.conv", "norm2": "norm2", "conv2": "conv2.conv",
        "conv_shortcut": "nin_shortcut.conv"}
_ATT = {"group_norm": "norm", "to_q": "attn.to_q", "to_k": "attn.to_k", "to_v": "attn.to_v",
        "to_out.0": "attn.out_proj"}


def _block_map(config: MonaiAutoencoderConfig) -> list[tuple[str, str | None, str]]:
    """``(diffusers prefix, MONAI core prefix or None for an identity, kind)`` in MONAI's block order."""
    out: list[tuple[str, str | None, str]] = []
    n = len(config.channels)
    nrb = config.num_res_blocks[0]
    add_mid_attention = bool(config.with_encoder_nonlocal_attn or config.with_decoder_nonlocal_attn)

    def middle(part: str, present: bool, e: int) -> int:
        if present:
            out.append((f"{part}.mid_block.resnets.0", f"{part}.blocks.{e}", "res"))
            out.append((f"{part}.mid_block.attentions.0", f"{part}.blocks.{e + 1}", "att"))
            out.append((f"{part}.mid_block.resnets.1", f"{part}.blocks.{e + 2}", "res"))
            return e + 3
        out.append((f"{part}.mid_block.resnets.0", None, "res"))
        if add_mid_attention:
            out.append((f"{part}.mid_block.attentions.0", None, "att"))
        out.append((f"{part}.mid_block.resnets.1", None, "res"))
        return e

    out.append(("encoder.conv_in", "encoder.blocks.0.conv", "plain"))
    e = 1
    for i in range(n):
        for r in range(nrb):
            out.append((f"encoder.down_blocks.{i}.resnets.{r}", f"encoder.blocks.{e}", "res"))
            e += 1
            if config.attention_levels[i]:
                out.append((f"encoder.down_blocks.{i}.attentions.{r}", f"encoder.blocks.{e}", "att"))
                e += 1
        if i != n - 1:
            out.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.blocks.{e}.conv.conv", "plain"))
            e += 1
    e = middle("encoder", bool(config.with_encoder_nonlocal_attn), e)
    out.append(("encoder.conv_norm_out", f"encoder.blocks.{e}", "plain"))
    out.append(("encoder.conv_out", f"encoder.blocks.{e + 1}.conv", "double"))
    out.append(("quant_conv", "", "quant"))
    out.append(("post_quant_conv", "post_quant_conv.conv", "plain"))

    out.append(("decoder.conv_in", "decoder.blocks.0.conv", "plain"))
    e = middle("decoder", bool(config.with_decoder_nonlocal_attn), 1)
    levels_att = list(reversed(config.attention_levels))
    for i in range(n):
        for r in range(nrb):
            out.append((f"decoder.up_blocks.{i}.resnets.{r}", f"decoder.blocks.{e}", "res"))
            e += 1
            if levels_att[i]:
                out.append((f"decoder.up_blocks.{i}.attentions.{r}", f"decoder.blocks.{e}", "att"))
                e += 1
        out.append((f"decoder.up_blocks.{i}.resnets.{nrb}", None, "res"))  # diffusers' extra block: identity
        if levels_att[i]:
            out.append((f"decoder.up_blocks.{i}.attentions.{nrb}", None, "att"))
        if i != n - 1:
            out.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.blocks.{e}.postconv.conv", "plain"))
            e += 1
    out.append(("decoder.conv_norm_out", f"decoder.blocks.{e}", "plain"))
    out.append(("decoder.conv_out", f"decoder.blocks.{e + 1}.conv", "plain"))
    return out


def _identity_tensor(suffix: str, dtype: torch.dtype):
    def build(_tensors, shape):
        ones = suffix.endswith("weight") and ("norm" in suffix)
        return (torch.ones if ones else torch.zeros)(shape, dtype=dtype)
    return build


def _double(tensors, shape):
    (t,) = tensors
    if t.shape[0] * 2 != shape[0] or t.shape[1:] != shape[1:]:
        raise StateDictMismatchError(f"encoder output conv of shape {tuple(t.shape)} does not fit half of {tuple(shape)}")
    return torch.cat([t, t], dim=0)


def _quant(kind: str):
    def build(tensors, shape):
        mu, sigma = tensors
        if 2 * mu.shape[0] != shape[0] or mu.shape != sigma.shape:
            raise StateDictMismatchError(
                f"quant_conv_mu {tuple(mu.shape)} / quant_conv_log_sigma {tuple(sigma.shape)} do not fit {tuple(shape)}")
        if kind == "bias":
            return torch.cat([mu, sigma])
        c = mu.shape[0]
        w = torch.zeros(shape, dtype=mu.dtype)
        w[:c, :c] = mu
        w[c:, c:] = sigma
        return w
    return build


def _entries(config: MonaiAutoencoderConfig, expected: Mapping[str, torch.Size], dtype: torch.dtype) -> list[Entry]:
    prefixes = _block_map(config)
    entries = []
    for target in expected:
        prefix, source, kind = next(p for p in prefixes if target.startswith(p[0] + "."))
        suffix = target[len(prefix) + 1:]
        if kind == "quant":
            part = suffix.rsplit(".", 1)[-1]
            entries.append(Entry(target, (f"quant_conv_mu.conv.{part}", f"quant_conv_log_sigma.conv.{part}"),
                                 _quant(part)))
        elif source is None:
            entries.append(Entry(target, (), _identity_tensor(suffix, dtype)))
        elif kind in ("plain", "double"):
            entries.append(Entry(target, (f"{source}.{suffix}",), _double if kind == "double" else None))
        else:
            table = _RES if kind == "res" else _ATT
            module, param = suffix.rsplit(".", 1)
            if module not in table:
                raise RuntimeError(f"autoencoder key map: no rule for {target!r}")
            entries.append(Entry(target, (f"{source}.{table[module]}.{param}",)))
    return entries


def autoencoder_state_for_diffusers(state: Mapping[str, torch.Tensor], config: MonaiAutoencoderConfig | None = None,
                                   sample_size: int = PAPER_MODEL.input_size, scaling_factor: float = PAPER_MODEL.scale_factor):
    """``(diffusers config, diffusers state dict, resolved config)`` for a MONAI ``AutoencoderKL`` state dict."""
    config = config or MonaiAutoencoderConfig.paper()
    config.validate()
    core, names = _to_core(state)
    config = config.resolved(core)
    diffusers_config = config.to_diffusers(sample_size, scaling_factor)
    expected = expected_shapes(meta_model(MonaiAutoencoderKL, diffusers_config))
    dtype = next(iter(core.values())).dtype if core else torch.float32
    hint = (f"The checkpoint does not match the configured MONAI AutoencoderKL (channels={list(config.channels)}, "
            f"num_res_blocks={list(config.num_res_blocks)}, attention_levels={list(config.attention_levels)}, "
            f"latent_channels={config.latent_channels}); pass the configuration it was trained with "
            "(e.g. autoencoder_config=<the bundle's autoencoder_def>).")
    converted = materialise(_entries(config, expected, dtype), expected, core,
                            what="autoencoder (MONAI AutoencoderKL)", hint=hint, original_names=names)
    return diffusers_config, converted, config


def convert_autoencoder(state: Mapping[str, torch.Tensor], config: MonaiAutoencoderConfig | None = None,
                        sample_size: int = PAPER_MODEL.input_size, scaling_factor: float = PAPER_MODEL.scale_factor):
    """A :class:`MonaiAutoencoderKL` computing what a MONAI ``AutoencoderKL`` checkpoint computes.

    ``vae.encode(x).latent_dist.mean`` equals MONAI's ``encode(x)[0]`` (``z_mu``) and
    ``vae.decode(z).sample`` equals MONAI's ``decode(z)``. Raises :class:`StateDictMismatchError`
    naming the first tensor that does not fit ``config`` (default: the paper's autoencoder).
    Returns ``(model, config)`` with ``with_*_nonlocal_attn`` resolved from the checkpoint.
    """
    diffusers_config, converted, config = autoencoder_state_for_diffusers(state, config, sample_size, scaling_factor)
    model = fill(meta_model(MonaiAutoencoderKL, diffusers_config), converted)
    set_groupnorm_eps(model, config.norm_eps)
    return model, config
