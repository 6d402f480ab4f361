"""Token attribution: which words of a phrase drive the denoising gain on an image."""

from __future__ import annotations

from typing import Any

import torch

from groundiff_core.methods.attribution.common import captum_attr, checked_phrases, prepare_input
from groundiff_core.methods.attribution.objective import DenoisingGain, ObjectiveConfig
from groundiff_core.models.ldm import LDM

__all__ = ["token_attribution"]


def token_attribution(model: LDM, image: Any, phrase: str, objective: ObjectiveConfig | None = None,
                      n_steps: int = 16, batch_size: int | None = 4) -> list[tuple[str, float]]:
    """Which words of ``phrase`` drive the gain on ``image``: ``[(token, score), ...]``.

    Layer integrated gradients on the text encoder's token-embedding layer, from a baseline prompt
    in which each of the phrase's tokens is replaced by the padding token (start, end and positions
    kept), summed over the embedding dimension. One entry per token between the start and end
    tokens, in order; scores are signed (positive: the word increases the gain) and sum, up to the
    integration error, to ``G(phrase) - G(baseline prompt)``.
    """
    checked_phrases(model, [phrase])
    x01, _ = prepare_input(model, image)
    f = DenoisingGain(model, phrase, objective, wrt="latent")
    z0 = model.encode_image(x01)
    ids = model.tokenize([phrase])["input_ids"].to(model.text_encoder.device)
    n_tok = model.phrase_token_count(phrase)
    pad = model.tokenizer.pad_token_id
    pad = model.tokenizer.eos_token_id if pad is None else pad
    ref = ids.clone()
    ref[:, 1:n_tok - 1] = pad

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        out = model.text_encoder(input_ids=input_ids)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return f.gain(z0.expand(input_ids.shape[0], *z0.shape[1:]), hidden.to(model.device, model.dtype))

    layer = model.text_encoder.get_input_embeddings()
    lig = captum_attr().LayerIntegratedGradients(forward, layer)
    attr = lig.attribute(ids, baselines=ref, n_steps=int(n_steps), internal_batch_size=batch_size)
    scores = attr.detach().float().sum(dim=-1)[0, 1:n_tok - 1].cpu().tolist()
    tokens = model.tokenizer.convert_ids_to_tokens(ids[0, 1:n_tok - 1].tolist())
    return [(tok.replace("</w>", ""), float(s)) for tok, s in zip(tokens, scores)]
