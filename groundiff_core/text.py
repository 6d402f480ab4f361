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
    """A ``CLIPTokenizer`` in which each of ``words`` (after :func:`split_words`) is a single token."""
    from transformers import CLIPTokenizer

    from tokenizers import Tokenizer, models, trainers

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    pieces = sorted({p for w in words for p in split_words(w)})
    # Learn byte-pair merges on the vocabulary itself, with room for every word: applying the learned
    # merges to a vocabulary word then reproduces it as one token (BPE replays its training order).
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=eos))
    alphabet = sorted({c for p in pieces for c in p})
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, min_frequency=0, special_tokens=[bos, eos], end_of_word_suffix="</w>",
        initial_alphabet=alphabet, show_progress=False,
    )
    bpe.train_from_iterator(pieces, trainer=trainer)
    state = bpe.model
    vocab = dict(bpe.get_vocab())
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        state.save(d)
        with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().splitlines()
                      if line and not line.startswith("#version")]
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = model_max_length
    return tok


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
