"""Reading cross-attention while the UNet runs: which tokens each map averages, and a processor
installed for the duration of a call.

Token selection comes first, as the recording's input: :func:`token_weights` (the phrase's own
tokens, the paper's choice, or one position), :func:`position_weights` (given positions, e.g. a class
name's, found by :func:`word_positions`). Each row of the weights ``[R, T]`` sums to 1.

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
rows of a guidance-free inversion) only as far as they are read: a walk of the UNet's blocks that
ends after the block holding the last recorded layer
(:func:`~groundiff_core.engine.truncated.forward_until`). The remaining blocks and the output
convolution are never computed, and the maps are those of a full pass, since nothing before the
exit point changes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from groundiff_core.engine.layers import CrossAttentionLayer
from groundiff_core.engine.truncated import exit_block, forward_until

__all__ = ["token_weights", "word_positions", "position_weights", "AttentionRecorder", "RecordingProcessor",
           "token_averaged_attention", "Sink", "StepStore"]


# ---------------------------------------------------------------------- token selection
def token_weights(token_counts: Sequence[int], max_tokens: int, selection: str = "phrase") -> torch.Tensor:
    """Averaging weights over token positions, ``[K, max_tokens]`` float32, each row summing to 1.

    ``token_counts[k]`` is the length of phrase ``k`` tokenised with its start and end tokens.
    "phrase" selects positions ``1 .. n-2`` (the phrase's own tokens, the paper's choice);
    "token:i" selects the single position ``i`` (1 = the first
    token after the start token), for per-token maps.
    """
    if selection.startswith("token:"):
        i = int(selection.split(":", 1)[1])
        w = torch.zeros(len(token_counts), max_tokens, dtype=torch.float32)
        for k, n in enumerate(token_counts):
            if not 1 <= i <= n - 2:
                raise ValueError(f"token position {i} is outside phrase {k}'s tokens 1..{n - 2}")
            w[k, i] = 1.0
        return w
    if selection != "phrase":
        raise ValueError(f"token selection must be 'phrase' or 'token:i', got {selection!r}")
    w = torch.zeros(len(token_counts), max_tokens, dtype=torch.float32)
    for k, n in enumerate(token_counts):
        stop = min(n - 1, max_tokens)
        if stop <= 1:
            raise ValueError(f"phrase {k} has no tokens between its start and end tokens")
        w[k, 1:stop] = 1.0 / (stop - 1)
    return w


def word_positions(tokenizer, phrase: str, words: str) -> list[int]:
    """Token positions of ``phrase`` (1 = the first token after the start token) that spell one of
    the words of ``words`` (e.g. a class name, "pleural effusion"), matched as whole token runs.

    Each word is tokenised alone (CLIP's BPE tokenises words independently, so a word's tokens are
    the same inside a phrase) and found as a contiguous run of the phrase's tokens; the positions of
    every run found are returned, sorted; none found: ``[]`` (the JBHI code's NaN map).
    """
    ids = tokenizer(phrase.lower(), truncation=False, verbose=False)["input_ids"]
    found: set[int] = set()
    for word in words.lower().split():
        w = tokenizer(word, truncation=False, verbose=False)["input_ids"][1:-1]
        if not w:
            continue
        for i in range(1, len(ids) - len(w)):
            if ids[i:i + len(w)] == w:
                found.update(range(i, i + len(w)))
    return sorted(found)


def position_weights(positions: Sequence[Sequence[int]], phrase_weights: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``(weights, empty)``: weights ``[K, max_tokens]`` averaging the given token positions of each
    row, and the rows without positions (they keep ``phrase_weights``' row, so that they compute like
    any other; the caller sets their maps to NaN). ``phrase_weights`` (:func:`token_weights`)
    says which positions are a phrase's own tokens: any other position is refused."""
    if len(positions) != len(phrase_weights):
        raise ValueError(f"got {len(phrase_weights)} phrases but {len(positions)} position lists")
    w = phrase_weights.clone()
    empty = []
    for k, pos in enumerate(positions):
        own = set(torch.nonzero(phrase_weights[k]).flatten().tolist())
        if not pos:
            empty.append(k)
        elif not set(int(i) for i in pos) <= own:
            raise ValueError(f"phrase {k}: token positions {list(pos)} outside its tokens {min(own)}..{max(own)}")
        else:
            w[k] = 0.0
            w[k, [int(i) for i in pos]] = 1.0 / len(pos)
    return w, empty


# ---------------------------------------------------------------------- recording
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


@torch.compiler.disable
def _deliver(recorder: "AttentionRecorder", index: int, maps: torch.Tensor) -> None:
    """Hand one layer's maps to the sink. Run eagerly under ``torch.compile``: the sink is Python
    state (running sums, counters) that a compiled graph would otherwise guard on and recompile for."""
    recorder.sink(index, maps)
    recorder.seen.add(index)


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
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)
        if target is not None and encoder_hidden_states is not None:
            if attention_mask is not None:
                raise NotImplementedError("recording cross-attention with an attention mask is not supported")
            rows, weights = target
            maps = token_averaged_attention(attn, hidden_states[rows], encoder_hidden_states[rows], weights,
                                            temb=None if temb is None else temb[rows])
            _deliver(self.recorder, self.layer.index, maps)
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
        self.seen: set[int] = set()  # layers recorded in the current read()
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

    @contextmanager
    def capture(self, rows: slice | torch.Tensor, weights: torch.Tensor) -> Iterator[None]:
        """Record ``rows`` of the batch (token weights ``[R, T]``) during the enclosed UNet call."""
        self.target = (rows, weights)
        try:
            yield
        finally:
            self.target = None

    def read(self, unet, sample: torch.Tensor, timestep, context: torch.Tensor, weights: torch.Tensor,
             forward=forward_until) -> bool:
        """Record every row of ``sample``, running ``unet`` only up to the last recorded layer.

        For rows whose prediction is not needed: the maps reach the sink exactly as in a full pass,
        and the blocks after the one holding the last recorded layer (execution order) are not
        computed (``forward``: :func:`~groundiff_core.engine.truncated.forward_until`, or a
        compiled copy of it). A UNet that walk does not reproduce runs whole. Returns whether the
        pass was truncated; the UNet's output is never returned.
        """
        last = max(self.layers, key=lambda layer: layer.index)
        stop = exit_block(unet, last.module)
        self.target = (slice(None), weights)
        self.seen = set()
        try:
            if stop is None:
                unet(sample, timestep, encoder_hidden_states=context, return_dict=False)
            else:
                forward(unet, sample, timestep, context, stop)
        finally:
            self.target = None
        if last.index not in self.seen:
            raise RuntimeError(f"the UNet pass ended without running cross-attention layer {last.index}; "
                               "were the recorded layers taken from another model?")
        return stop is not None


class StepStore:
    """Recording sink of record mode (:meth:`Grounder.record`): every map, per layer, in call (= step) order."""

    def __init__(self) -> None:
        self.maps: dict[int, list[torch.Tensor]] = {}

    def __call__(self, layer: int, maps: torch.Tensor) -> None:
        self.maps.setdefault(layer, []).append(maps)
