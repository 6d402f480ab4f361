"""The UNet's cross-attention layers, numbered in EXECUTION order.

``unet.attn_processors`` (and ``named_modules``) list modules in registration order, where a
diffusers ``UNet2DConditionModel`` registers its up blocks before its middle block. The paper numbers
layers in the order they run: down blocks, middle block, up blocks. So the order is taken from a
trace: one dry forward pass on a tiny input, with a pre-hook on every cross-attention module that
notes when it runs and at what resolution. The result is cached per UNet.

On the paper's UNet (3 levels, attention at the two deeper ones, 2 res blocks per level) this gives
0-1 down level 1, 2-3 down level 2, 4 middle, 5-7 up level 0, 8-10 up level 1: layers 2..7 run at
the deepest resolution, and the paper reads 3, 4, 6, 7.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CrossAttentionLayer", "cross_attention_layers"]

_CACHE: "weakref.WeakKeyDictionary[Any, tuple[CrossAttentionLayer, ...]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention layer of a UNet.

    Attributes
    ----------
    index : position in execution order (the paper's layer number)
    name : module path, e.g. ``"mid_block.attentions.0.transformer_blocks.0.attn2"``
    downsample : latent side / this layer's map side (1, 2, 4, ...)
    heads : number of attention heads
    module : the diffusers ``Attention`` module (not compared, not shown)
    """

    index: int
    name: str
    downsample: int
    heads: int
    module: Any = field(compare=False, repr=False, hash=False)

    def side(self, latent_size: int) -> int:
        """Side of this layer's attention map for a ``latent_size`` latent."""
        return -(-int(latent_size) // self.downsample)


def _is_cross_attention(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "is_cross_attention", False)) and hasattr(module, "set_processor")


def _cross_attention_dim(unet) -> int:
    dim = unet.config.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        dim = dim[0]
    return int(dim)


@torch.no_grad()
def cross_attention_layers(unet) -> tuple[CrossAttentionLayer, ...]:
    """Cross-attention layers of a diffusers ``UNet2DConditionModel`` in execution order (cached)."""
    cached = _CACHE.get(unet)
    if cached is not None:
        return cached
    names = {m: n for n, m in unet.named_modules() if _is_cross_attention(m)}
    if not names:
        raise ValueError("the UNet has no cross-attention layers: text-conditioned grounding needs them")
    order: list[tuple[torch.nn.Module, int]] = []

    def note(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        if all(m is not module for m, _ in order):
            tokens = hs.shape[1] if hs.ndim == 3 else hs.shape[-1] * hs.shape[-2]
            order.append((module, int(tokens)))

    levels = len(unet.config.block_out_channels)
    side = 2 ** levels  # smallest latent every level can halve, with room to spare
    p = next(unet.parameters())
    sample = torch.zeros(1, unet.config.in_channels, side, side, device=p.device, dtype=p.dtype)
    context = torch.zeros(1, 2, _cross_attention_dim(unet), device=p.device, dtype=p.dtype)
    hooks = [m.register_forward_pre_hook(note, with_kwargs=True) for m in names]
    try:
        unet(sample, 0, encoder_hidden_states=context)
    finally:
        for h in hooks:
            h.remove()
    missing = [names[m] for m in names if all(m is not o for o, _ in order)]
    if missing:
        raise ValueError(f"cross-attention layers {missing} did not run in a forward pass; cannot number them")
    layers = []
    for i, (module, tokens) in enumerate(order):
        map_side = int(round(tokens ** 0.5))
        if map_side * map_side != tokens:
            raise ValueError(f"cross-attention layer {names[module]} sees a non-square map ({tokens} positions)")
        layers.append(CrossAttentionLayer(index=i, name=names[module], downsample=max(1, side // map_side),
                                          heads=int(module.heads), module=module))
    result = tuple(layers)
    _CACHE[unet] = result
    return result
