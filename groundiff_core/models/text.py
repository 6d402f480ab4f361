"""Tokenizers and text encoders built from a closed vocabulary, and the check that a phrase fits one.

The phantom model and the tests need a real CLIP-style tokenizer (start and end tokens, 77-token
padding, lower-casing) without downloading CLIP's vocabulary. :func:`word_tokenizer` builds a
``transformers.CLIPTokenizer`` whose byte-pair merges spell out each word of a given vocabulary, so
every known word is one token, an unknown word made of known letters is several sub-word tokens, and
an unknown character has no token at all.

Why unknown characters are refused rather than mapped to an unknown token: a CLIP tokenizer's
unknown token is its end-of-text token, and a model trained with ``zero_padding`` zeroes the
conditioning after the first end-of-text token, so "é pleural effusion" would silently become an
empty phrase. A dedicated unknown-token id would need its own row in the text encoder's embedding;
the shipped phantom model has exactly one row per token of its vocabulary (260) and retraining it
is out of the question, and a row that never appeared in training would carry no meaning anyway.
So :func:`check_phrase` refuses such phrases with a ``ValueError`` naming the characters. CLIP's
byte-level BPE (the paper's and Stable Diffusion's tokenizer) represents any text, so for it the
check never fires; a tokenizer with a distinct unknown token only gets a warning.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable

__all__ = ["split_words", "word_tokenizer", "small_text_encoder", "check_phrase", "is_closed_vocabulary",
           "unknown_words", "unrepresentable"]

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def split_words(text: str) -> list[str]:
    """The pieces CLIP's pre-tokenizer makes of ``text`` (lower-cased words, digits, punctuation)."""
    return _WORD.findall(text.lower())


def word_tokenizer(words: Iterable[str], model_max_length: int = 77):
    """A ``CLIPTokenizer`` in which each of ``words`` (after :func:`split_words`) is a single token.

    Deterministic: the same words always give the same token ids (see :func:`_learn_merges`). It has
    no unknown-token id of its own (its ``unk_token`` is the end token, as in CLIP): characters
    outside the words' alphabet cannot be represented and :func:`check_phrase` refuses them (see the
    module docstring for why no extra id is added).
    """
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    pieces = sorted({p for w in words for p in split_words(w)})
    alphabet = sorted({c for p in pieces for c in p})
    merges = _learn_merges(pieces)
    tokens = [bos, eos] + alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = model_max_length
    return tok


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def is_closed_vocabulary(tokenizer: Any) -> bool:
    """True for a tokenizer built from a word list (it cannot spell every ASCII letter and digit).

    CLIP's byte-level BPE spells anything; :func:`word_tokenizer`'s tokenizers know only their
    words' letters.
    """
    probe = "abcdefghijklmnopqrstuvwxyz 0 1 2 3 4 5 6 7 8 9"
    bad = {tokenizer.eos_token_id, tokenizer.unk_token_id} - {None}
    return any(i in bad for i in _ids(tokenizer, probe))


def check_phrase(tokenizer: Any, phrase: str) -> None:
    """Refuse (``ValueError``) or warn about parts of ``phrase`` that ``tokenizer`` cannot represent.

    * A character that tokenizes to the end-of-text token (a closed-vocabulary tokenizer's unknown
      token, or a literal ``<|endoftext|>``) would end the phrase early and, for ``zero_padding``
      models, silence what follows: refused, naming the words and characters.
    * A word that becomes a distinct unknown token: a ``UserWarning`` naming it.
    * A word a closed-vocabulary tokenizer only spells in sub-word pieces (the model never saw it as
      one token): a ``UserWarning`` naming it.
    """
    eos, unk = tokenizer.eos_token_id, tokenizer.unk_token_id
    ids = _ids(tokenizer, phrase)
    if eos in ids:
        words = [w for w in phrase.split() if eos in _ids(tokenizer, w)] or [phrase]
        special = set(getattr(tokenizer, "all_special_tokens", []))
        known = {c for t in tokenizer.get_vocab() if t not in special for c in t.removesuffix("</w>")}
        chars = sorted({c for w in words for c in w.lower() if c not in known})
        raise ValueError(f"phrase {phrase!r}: the model's tokenizer cannot represent "
                         f"{', '.join(repr(w) for w in words)}"
                         + (f" (unknown characters: {' '.join(repr(c) for c in chars)})" if chars else "")
                         + "; it would become the end-of-text token and cut the phrase there")
    if unk is not None and unk != eos and unk in ids:
        words = [w for w in phrase.split() if unk in _ids(tokenizer, w)]
        _warn_once(f"phrase {phrase!r}: {', '.join(repr(w) for w in words)} become the tokenizer's unknown "
                   f"token {tokenizer.unk_token!r}")
        return
    if is_closed_vocabulary(tokenizer):
        unknown = [p for p in dict.fromkeys(split_words(phrase)) if len(_ids(tokenizer, p)) > 1]
        if unknown:
            _warn_once(f"phrase {phrase!r}: {', '.join(repr(w) for w in unknown)} not in the model's closed "
                       "vocabulary; spelled in sub-word pieces the model may never have seen")


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A ``UserWarning`` the first time this exact message comes up in the process: a phrase is
    checked when its tokens are counted and again when it is encoded, and a run sees it per image."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The words of ``text`` that ``tokenizer`` maps to its unknown token (none for CLIP's BPE)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    return [] if unk is None else [w for w in text.split() if unk in _ids(tokenizer, w)]


def unrepresentable(tokenizer: Any, text: str) -> str | None:
    """Why ``tokenizer`` cannot represent ``text`` (:func:`check_phrase`'s refusal), or ``None`` if it can."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warning is not a refusal
        try:
            check_phrase(tokenizer, text)
        except ValueError as e:
            return str(e)
    return None


def _learn_merges(pieces: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned on ``pieces`` until each piece is one symbol.

    Classic BPE training (most frequent adjacent pair first), with ties broken by the pair's text so
    the result never depends on hashing order. Replaying the merges in order on a training piece
    repeats its training history, so every piece ends as a single token.
    """
    from collections import Counter

    words = [tuple(p[:-1]) + (p[-1] + "</w>",) for p in pieces]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for w in words if len(w) > 1 for pair in zip(w, w[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        words = [_merge(w, best) for w in words]


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def small_text_encoder(vocab_size: int, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                       max_positions: int = 77, seed: int = 0):
    """A randomly initialised ``CLIPTextModel`` of the given size (seeded)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(cfg)
