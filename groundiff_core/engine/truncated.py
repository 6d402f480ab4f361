"""The early exit: a UNet forward that stops after the block holding the last recorded layer.

With guidance 0 the conditional rows' prediction is never used, only their attention at the
recorded layers. :func:`forward_until` runs a diffusers ``UNet2DConditionModel`` as its own
``forward`` does (time embedding, ``conv_in``, down blocks, middle block, up blocks, each called
through its module, so its hooks run), block by block, and returns after the block that holds the
last recorded layer in execution order. Nothing before that point depends on what follows it, so
the recorded maps are those of a whole pass; the rest of the network is never computed.

No exception leaves the UNet (enclosing modules' hooks are not skipped) and the walk is plain
code that ``torch.compile`` can trace. A UNet this walk does not reproduce exactly (another class,
class or added embeddings, an accelerate hook or a forward hook on the whole UNet, which a walk
that never calls ``unet.forward`` would skip) gets ``None`` from :func:`exit_block` and runs whole:
the same maps, without the saving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ExitBlock", "exit_block", "forward_until"]


@dataclass(frozen=True)
class ExitBlock:
    """Where a truncated pass ends: after ``down_blocks[index]``, the ``mid`` block or ``up_blocks[index]``."""

    part: str  # "down" | "mid" | "up"
    index: int = 0


def _walkable(unet) -> bool:
    """Whether :func:`forward_until` computes exactly what ``unet.forward`` does for this UNet."""
    from diffusers import UNet2DConditionModel

    if type(unet) is not UNet2DConditionModel or hasattr(unet, "_hf_hook"):
        return False
    if unet._forward_hooks or unet._forward_pre_hooks:  # the walk does not call unet.forward, so they would not run
        return False
    c = unet.config
    return (c.class_embed_type is None and c.addition_embed_type is None and c.encoder_hid_dim_type is None
            and c.num_class_embeds is None and getattr(unet, "position_net", None) is None)


def exit_block(unet, module: torch.nn.Module) -> ExitBlock | None:
    """The top-level block of ``unet`` that holds ``module`` (the last recorded layer), or None
    when the UNet is not walked (:func:`_walkable`) or does not hold it."""
    if not _walkable(unet):
        return None
    parts = [("down", i, b) for i, b in enumerate(unet.down_blocks)]
    parts += [("mid", 0, unet.mid_block)] if unet.mid_block is not None else []
    parts += [("up", i, b) for i, b in enumerate(unet.up_blocks)]
    for part, i, block in parts:
        if any(m is module for m in block.modules()):
            return ExitBlock(part, i)
    return None


def _cross(block) -> bool:
    return bool(getattr(block, "has_cross_attention", False))


def forward_until(unet, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                  stop: ExitBlock) -> None:
    """Run ``unet`` on ``sample`` as ``unet.forward`` does, up to and including block ``stop``.

    Parameters
    ----------
    unet : a diffusers ``UNet2DConditionModel`` for which :func:`exit_block` gave ``stop``
    sample : ``[R, C, l, l]`` latents
    timestep : the step's timestep (int or 0-d tensor)
    encoder_hidden_states : ``[R, T, D]`` text conditioning
    stop : the block after which the pass ends

    Returns nothing: the recorded layers' processors have read what they need.
    """
    ups = 2 ** unet.num_upsamplers
    forward_upsample_size = any(d % ups != 0 for d in sample.shape[-2:])
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = encoder_hidden_states
    sample = unet.conv_in(sample)

    residuals: tuple[torch.Tensor, ...] = (sample,)
    for i, block in enumerate(unet.down_blocks):
        if _cross(block):
            sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        residuals += res
        if stop == ExitBlock("down", i):
            return
    if unet.mid_block is not None:
        sample = unet.mid_block(sample, emb, encoder_hidden_states=context) if _cross(unet.mid_block) \
            else unet.mid_block(sample, emb)
        if stop.part == "mid":
            return
    size = None  # as in unet.forward: set before each up block but the last, kept for the last
    for i, block in enumerate(unet.up_blocks):
        res = residuals[-len(block.resnets):]
        residuals = residuals[:-len(block.resnets)]
        if forward_upsample_size and i < len(unet.up_blocks) - 1:
            size = residuals[-1].shape[2:]
        if _cross(block):
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                           encoder_hidden_states=context, upsample_size=size)
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
        if stop == ExitBlock("up", i):
            return
    raise ValueError(f"the UNet has no block {stop}")
