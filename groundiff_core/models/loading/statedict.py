"""Filling a diffusers model from a foreign state dict, with errors that name the offending tensor.

A conversion is a list of :class:`Entry`: one per tensor of the target (diffusers) model, saying
which checkpoint tensors it is made of and how (a plain copy, or a small function such as a split or
a block-diagonal merge; entries without sources synthesise exact identities, see
:mod:`.monai_autoencoder`). :func:`materialise` checks the whole list against the checkpoint before
anything is loaded: every needed tensor present, no tensor left over, every shape as expected. It
never fills a gap with random weights. :func:`meta_model` builds the diffusers model on the meta
device (no memory, no random init) and :func:`fill` assigns the converted tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from groundiff_core.models.loading.errors import StateDictMismatchError

__all__ = ["Entry", "materialise", "meta_model", "fill", "expected_shapes", "set_groupnorm_eps", "load_saved"]


@dataclass(frozen=True)
class Entry:
    """One tensor of the target model.

    Attributes
    ----------
    target : the target model's state-dict key
    sources : checkpoint keys it is made of (empty: synthesised by ``build``)
    build : ``build(tensors, shape) -> tensor``; ``None`` copies the single source unchanged
    """

    target: str
    sources: tuple[str, ...]
    build: Callable[[Sequence[torch.Tensor], torch.Size], torch.Tensor] | None = None


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """State-dict key -> shape of ``model`` (works on the meta device)."""
    return {k: v.shape for k, v in model.state_dict().items()}


def _listing(keys: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def materialise(
    entries: Sequence[Entry],
    expected: Mapping[str, torch.Size],
    checkpoint: Mapping[str, torch.Tensor],
    *,
    what: str,
    hint: str = "",
    original_names: Mapping[str, str] | Callable[[str], str] | None = None,
) -> dict[str, torch.Tensor]:
    """The target state dict built from ``checkpoint``; raises :class:`StateDictMismatchError` if the
    checkpoint does not fit (missing tensors, leftover tensors, or the first tensor of the wrong shape,
    in the checkpoint's own order and naming: ``original_names`` maps the normalised names used by the
    entries back to the checkpoint's, as a mapping or a function)."""
    if callable(original_names):
        orig = original_names
    else:
        names = dict(original_names or {})

        def orig(key: str) -> str:
            return names.get(key, key)

    targets = [e.target for e in entries]
    if sorted(targets) != sorted(expected):  # a bug in the key map, not a user error
        extra = sorted(set(targets) - set(expected))
        lacking = sorted(set(expected) - set(targets))
        raise RuntimeError(f"{what}: internal key map incomplete (extra {extra[:5]}, lacking {lacking[:5]})")
    hint = f" {hint}" if hint else ""
    needed: list[str] = []
    for e in entries:
        needed.extend(s for s in e.sources if s not in needed)
    missing = [s for s in needed if s not in checkpoint]
    if missing:
        raise StateDictMismatchError(
            f"{what}: {len(missing)} tensor(s) that the configured architecture needs are missing from the "
            f"checkpoint: {_listing([orig(k) for k in missing])}.{hint}")
    used = set(needed)
    leftover = [k for k in checkpoint if k not in used]
    if leftover:
        raise StateDictMismatchError(
            f"{what}: {len(leftover)} checkpoint tensor(s) have no place in the configured architecture: "
            f"{_listing([orig(k) for k in leftover])}.{hint}")
    position = {k: i for i, k in enumerate(checkpoint)}
    ordered = sorted(entries, key=lambda e: min((position[s] for s in e.sources), default=len(position)))
    out: dict[str, torch.Tensor] = {}
    for e in ordered:
        shape = expected[e.target]
        tensors = [checkpoint[s] for s in e.sources]
        if e.build is None:
            (src,) = tensors
            if src.shape != shape:
                raise StateDictMismatchError(
                    f"{what}: tensor {orig(e.sources[0])!r} has shape {tuple(src.shape)} in the checkpoint, but "
                    f"the configured architecture expects {tuple(shape)} (diffusers {e.target!r}).{hint}")
            out[e.target] = src
        else:
            try:
                value = e.build(tensors, shape)
            except StateDictMismatchError as err:
                raise StateDictMismatchError(f"{what}: {err}{hint}") from None
            if value.shape != shape:
                got = ", ".join(f"{orig(s)!r} {tuple(t.shape)}" for s, t in zip(e.sources, tensors))
                raise StateDictMismatchError(
                    f"{what}: tensor(s) {got} do not fit diffusers {e.target!r} of shape {tuple(shape)}.{hint}")
            out[e.target] = value
    return {k: out[k] for k in expected}


def meta_model(cls, config: Mapping):
    """``cls(**config)`` built on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return cls(**config)


def fill(model, state: Mapping[str, torch.Tensor]):
    """Assign ``state`` (strict) to a model built by :func:`meta_model`; returns it in eval mode."""
    model.load_state_dict(dict(state), strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # non-persistent buffers would stay uninitialised
        raise RuntimeError(f"{type(model).__name__}: tensors left on the meta device after loading: {left[:5]}")
    return model.eval()


def load_saved(cls, folder, variant: str | None = None):
    """A diffusers model saved with ``save_pretrained``, read from disk only, in eval mode: diffusers'
    own ``from_pretrained`` (with ``accelerate``, a dependency, it builds the model on the meta device
    and fills it, so no random initialisation is paid for)."""
    kwargs = {"variant": variant} if variant else {}
    return cls.from_pretrained(folder, local_files_only=True, **kwargs).eval()


def set_groupnorm_eps(model: torch.nn.Module, eps: float) -> None:
    """Set every ``GroupNorm``'s epsilon (diffusers fixes some at 1e-6; MONAI uses one ``norm_eps``)."""
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.eps = float(eps)
