"""Reading cross-attention while the UNet runs: a processor installed for the duration of a call.

:class:`AttentionRecorder` is a context manager. On entry it wraps the attention processor of each
layer to be read in a :class:`RecordingProcessor`; on exit (also on error) it puts the original
processors back, so the model is left as it was found. Layers that are not read are never touched
and keep diffusers' fused attention.

The wrapped processor leaves the layer's output to the original processor (the recording never
changes what the model computes) and, only while a target is set (:meth:`AttentionRecorder.capture`)
and only for the target's rows of the batch (the conditional rows), recomputes the attention
probabilities of those rows with a float32 softmax over the text tokens and reduces them at once:
a weighted average over tokens (weights ``[R, T]``, one row per phrase) and a mean over heads. What
leaves the layer is one map per row, ``[R, h, w]`` float32 (float64 for a float64 model, which the
exactness tests use) at the layer's native resolution, handed
to a sink ``sink(layer_index, maps)`` on the model's device. Token maps are never kept.

:meth:`AttentionRecorder.read` runs the UNet on rows whose output nobody uses (the conditional
rows of a guidance-free inversion) only as far as they are read: the processor of the last
recorded layer, in execution order, records its maps and then ends the forward pass by raising a
private exception that :meth:`~AttentionRecorder.read` catches. Everything after that layer (the
rest of its transformer block, the remaining up blocks, the output convolution) is skipped, and
the maps are those of a full pass, since nothing before the exit point changes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from groundiff_core.engine.layers import CrossAttentionLayer

__all__ = ["AttentionRecorder", "RecordingProcessor", "token_averaged_attention", "Sink", "StepStore"]


class _ForwardDone(Exception):
    """Raised after the last recorded layer of a truncated pass (:meth:`AttentionRecorder.read`)."""

Sink = Callable[[int, torch.Tensor], None]
"""Receives ``(layer_index, maps [R, h, w] float32)`` once per recorded layer per UNet call."""


def token_averaged_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                             weights: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-attention probabilities of ``attn`` averaged over tokens (by ``weights``) and heads.

    Parameters
    ----------
    attn : a diffusers ``Attention`` module (cross-attention)
    hidden_states : ``[R, h*w, C]`` or ``[R, C, h, w]`` queries' input
    encoder_hidden_states : ``[R, T, D]`` text conditioning
    weights : ``[R, T]`` token weights per row (rows sum to 1 for an average)

    Returns
    -------
    ``[R, h, w]`` float32 (float64 for a float64 model):
    ``sum_t weights[r, t] * mean_heads softmax_t(q k^T * scale)``.
    """
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        r, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(r, c, h * w).transpose(1, 2)
    else:
        h = w = math.isqrt(hidden_states.shape[1])
        if h * w != hidden_states.shape[1]:
            raise ValueError(f"cannot read a non-square attention map ({hidden_states.shape[1]} positions)")
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query = attn.to_q(hidden_states)
    key = attn.to_k(encoder_hidden_states)
    rows, heads = query.shape[0], attn.heads
    head_dim = key.shape[-1] // heads
    query = query.view(rows, -1, heads, head_dim).transpose(1, 2)
    key = key.view(rows, -1, heads, head_dim).transpose(1, 2)
    if getattr(attn, "norm_q", None) is not None:
        query = attn.norm_q(query)
    if getattr(attn, "norm_k", None) is not None:
        key = attn.norm_k(key)
    work = torch.promote_types(query.dtype, torch.float32)  # float32 at least, also for half models
    scores = torch.matmul(query.to(work), key.to(work).transpose(-1, -2)) * attn.scale  # [R, heads, hw, T]
    probs = scores.softmax(dim=-1)
    maps = torch.einsum("rhqt,rt->rq", probs, weights.to(work)) / heads
    return maps.view(rows, h, w)


class RecordingProcessor:
    """Wraps one layer's original processor; reads the target rows' attention when asked."""

    def __init__(self, layer: CrossAttentionLayer, inner, recorder: "AttentionRecorder"):
        self.layer = layer
        self.inner = inner
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        target = self.recorder.target
        exit_here = target is not None and self.recorder.exit_after == self.layer.index
        # at the exit point the layer's output is never used: only its probabilities are computed
        out = None if exit_here else self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                                attention_mask=attention_mask, **kwargs)
        if target is not None and encoder_hidden_states is not None:
            if attention_mask is not None:
                raise NotImplementedError("recording cross-attention with an attention mask is not supported")
            rows, weights = target
            maps = token_averaged_attention(attn, hidden_states[rows], encoder_hidden_states[rows], weights,
                                            temb=None if temb is None else temb[rows])
            self.recorder.sink(self.layer.index, maps)
        if exit_here:
            raise _ForwardDone
        return out


class AttentionRecorder:
    """Context manager that records the given cross-attention layers into ``sink``.

    Example::

        with AttentionRecorder(layers, sink) as rec:
            unet(z, t, ctx)                        # not recorded
            with rec.capture(slice(1, 3), w):      # rows 1..2 are conditional, w is [2, T]
                unet(z, t, ctx)                    # sink(layer, maps [2, h, w]) per layer
            rec.read(unet, zc, t, cc, w)           # the same maps; the pass stops after the last layer
    """

    def __init__(self, layers: Sequence[CrossAttentionLayer], sink: Sink):
        self.layers = tuple(layers)
        if not self.layers:
            raise ValueError("AttentionRecorder needs at least one cross-attention layer to record")
        self.sink = sink
        self.target: tuple[slice | torch.Tensor, torch.Tensor] | None = None
        self.exit_after: int | None = None  # set only during read(): the layer that ends the pass
        self._saved: list[tuple[object, object]] = []

    def __enter__(self) -> "AttentionRecorder":
        try:
            for layer in self.layers:
                module = layer.module
                original = module.get_processor()
                module.set_processor(RecordingProcessor(layer, original, self))
                self._saved.append((module, original))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._saved:
            module, original = self._saved.pop()
            module.set_processor(original)
        self.target = None
        self.exit_after = None

    @contextmanager
    def capture(self, rows: slice | torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
        """Record ``rows`` of the batch (token weights ``[R, T]``) during the enclosed UNet call."""
        self.target = (rows, weights)
        try:
            yield
        finally:
            self.target = None

    def read(self, unet, sample: torch.Tensor, timestep, context: torch.Tensor, weights: torch.Tensor) -> None:
        """Record every row of ``sample``, running ``unet`` only up to the last recorded layer.

        For rows whose prediction is not needed: the maps reach the sink exactly as in a full pass
        (nothing before the last recorded layer, in execution order, depends on what follows it), and
        the rest of the network is not computed. There is no output.
        """
        last = max(layer.index for layer in self.layers)
        self.target = (slice(None), weights)
        self.exit_after = last
        try:
            unet(sample, timestep, encoder_hidden_states=context, return_dict=False)
        except _ForwardDone:
            return
        finally:
            self.target = None
            self.exit_after = None
        raise RuntimeError(f"the UNet pass ended without running cross-attention layer {last}; "
                           "were the recorded layers taken from another model?")


class StepStore:
    """Recording sink of record mode (:meth:`Grounder.record`): every map, per layer, in call (= step) order."""

    def __init__(self) -> None:
        self.maps: dict[int, list[torch.Tensor]] = {}

    def __call__(self, layer: int, maps: torch.Tensor) -> None:
        self.maps.setdefault(layer, []).append(maps)
