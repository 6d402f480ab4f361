"""Tokenizers and text encoders built from a closed vocabulary.

The phantom model and the tests need a real CLIP-style tokenizer (start and end tokens, 77-token
padding, lower-casing) without downloading CLIP's vocabulary. :func:`word_tokenizer` builds a
``transformers.CLIPTokenizer`` whose byte-pair merges spell out each word of a given vocabulary, so
every known word is one token and anything else becomes the unknown token.
"""

from __future__ import annotations

import re
from typing import Iterable

__all__ = ["split_words", "word_tokenizer", "small_text_encoder"]

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def split_words(text: str) -> list[str]:
    """The pieces CLIP's pre-tokenizer makes of ``text`` (lower-cased words, digits, punctuation)."""
    return _WORD.findall(text.lower())


def word_tokenizer(words: Iterable[str], model_max_length: int = 77):
    """A ``CLIPTokenizer`` in which each of ``words`` (after :func:`split_words`) is a single token.

    Deterministic: the same words always give the same token ids (see :func:`_learn_merges`).
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
