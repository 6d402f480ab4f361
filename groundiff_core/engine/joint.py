"""The inversion with both branches in its own UNet calls, for the cases where the trajectory cannot
be kept apart from the phrases: a non-zero guidance scale (each phrase steers its own trajectory)
and ``early_exit=False`` (the conditional rows through the whole network, stacked with the
unconditional ones: the comparison the early exit is measured against). With guidance 0 the
grounder computes the trajectory first and reads the phrases on it
(:meth:`~groundiff_core.engine.grounder.Grounder._run`); the maps are the same.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch

from groundiff_core.engine.inversion import ddim_run
from groundiff_core.engine.layers import CrossAttentionLayer
from groundiff_core.engine.recording import AttentionRecorder
from groundiff_core.io.images import load_image
from groundiff_core.io.preprocess import CropGeometry, prepare_image

__all__ = ["invert_joint"]


@torch.no_grad()
def invert_joint(grounder, batch, window: tuple[int, int], layers: Sequence[CrossAttentionLayer],
                  sink) -> list[CropGeometry]:
    """Both branches in the inversion's own UNet calls: with guidance (one trajectory per phrase)
    or ``early_exit=False`` (the conditional rows through the whole network, for comparison)."""
    model, unet = grounder.model, grounder.model.unet
    device, dtype = model.device, model.dtype
    work = torch.promote_types(dtype, torch.float32)
    prepared = [prepare_image(load_image(i), model.input_size, grounder.config.conventions) for i in batch.images]
    start, stop = window
    g = float(grounder.config.guidance_scale)
    z = model.encode_image(torch.cat([x for x, _ in prepared])).to(work)
    cond = model.encode_text(batch.phrases)
    weights = batch.weights.to(device)
    n_rows = cond.shape[0]
    row_image = batch.row_image.to(device)
    if g != 0.0:  # the trajectory depends on the phrase: one per row
        z = z[row_image]
        cond_source = torch.arange(n_rows, device=device)
    else:
        cond_source = row_image
    uncond = model.encode_text([""]).expand(z.shape[0], -1, -1)
    last = stop - 1

    def predict(z: torch.Tensor, i: int, t: int) -> torch.Tensor | None:
        need_uncond, need_cond = i < last, i >= start or g != 0.0
        if not (need_uncond or need_cond):
            return None
        xs, ctx = ([z], [uncond]) if need_uncond else ([], [])
        if need_cond:
            xs.append(z[cond_source])
            ctx.append(cond)
        n_u = z.shape[0] if need_uncond else 0
        sample = torch.cat(xs).to(dtype)
        capture = recorder.capture(slice(n_u, n_u + n_rows), weights) if need_cond and i >= start \
            else nullcontext()
        with capture:
            out = unet(sample, t, encoder_hidden_states=torch.cat(ctx), return_dict=False)[0]
        grounder._count(sample.shape[0])
        if not need_uncond:
            return None
        pred = out[:n_u].to(work)
        return pred + g * (out[n_u:].to(work) - pred) if g != 0.0 else pred

    with AttentionRecorder(layers, sink) as recorder:
        ddim_run(grounder.schedule(), z, predict, stop, "DDIM inversion" if grounder.progress else None)
    return [geom for _, geom in prepared]
