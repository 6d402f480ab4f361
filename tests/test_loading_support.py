"""Shared helpers for the loading tests (no tests here): MONAI networks with the paper's configuration
scaled down in width, random weights, the old GenerativeModels key layout, attention probes, and
folders laid out like the paper's model and like a Stable Diffusion pipeline.

Scaling: the paper's UNet has channels (256, 512, 768), one head per attention layer (head channels
= channels), cross-attention dim 1024 = 4 x channels[0], GroupNorm 32 groups, eps 1e-6, 2 res blocks,
attention at levels 1 and 2. Here every width is divided by 8: channels (32, 64, 96), head channels
(0, 64, 96), cross-attention dim 128 = 4 x 32; levels, attention layout, head rule, groups and eps
are unchanged. The autoencoder (64, 128, 128, 128) becomes (32, 64, 64, 64), latent 3, no attention.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

UNET_KW = dict(in_channels=3, out_channels=3, channels=(32, 64, 96), attention_levels=(False, True, True),
               num_res_blocks=2, num_head_channels=(0, 64, 96), norm_num_groups=32, norm_eps=1e-6,
               with_conditioning=True, transformer_num_layers=1, cross_attention_dim=128)
AE_KW = dict(in_channels=1, out_channels=1, channels=(32, 64, 64, 64), num_res_blocks=2,
             attention_levels=(False, False, False, False), latent_channels=3, norm_num_groups=32, norm_eps=1e-6,
             with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
IMAGE = 64          # scaled input side (the paper: 512); latent 8, deepest attention maps 2x2 (paper 16x16)
TEXT_WORDS = ("left right pleural effusion cardiomegaly opacity lung base small large bilateral "
              "pneumothorax apical heart enlarged").split()


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn (MONAI zero-initialises several output convs, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and name == "weight":
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
                elif p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def monai_unet(seed: int = 0, **overrides):
    from monai.networks.nets import DiffusionModelUNet

    return randomise(DiffusionModelUNet(spatial_dims=2, **{**UNET_KW, **overrides}), seed)


def monai_autoencoder(seed: int = 1, **overrides):
    from monai.networks.nets import AutoencoderKL

    return randomise(AutoencoderKL(spatial_dims=2, **{**AE_KW, **overrides}), seed)


def to_generative_layout(state: dict, part: str) -> dict:
    """MONAI core state dict -> the old MONAI GenerativeModels names (``part``: "unet" or "autoencoder")."""
    rules = {
        "unet": [(r"(transformer_blocks\.\d+\.attn[12])\.out_proj\.", r"\1.to_out.0."),
                 (r"\.upsampler\.postconv\.conv\.", ".upsampler.conv.conv.")],
        "autoencoder": [(r"^(decoder\.blocks\.\d+)\.postconv\.conv\.", r"\1.conv.conv."),
                        (r"\.attn\.(to_q|to_k|to_v)\.", r".\1."),
                        (r"\.attn\.out_proj\.", ".proj_attn.")],
    }[part]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    return out


# ------------------------------------------------------------------ cross-attention probes
class _ProbeProcessor:
    """Records softmax(q k^T * scale) per call ([B, heads, N, T]) and returns the default processor's output."""

    def __init__(self, sink: list, inner):
        self.sink, self.inner = sink, inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)
        self.sink.append(probs.reshape(b, attn.heads, *probs.shape[1:]).detach().clone())
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, temb=temb, **kw)


@torch.no_grad()
def diffusers_cross_attention(unet, x, t, ctx) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
    """(output, probabilities per cross-attention call in execution order, module names in that order)."""
    probs: list[torch.Tensor] = []
    order: list[str] = []
    saved, hooks = [], []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            saved.append((module, module.get_processor()))
            module.set_processor(_ProbeProcessor(probs, module.get_processor()))
            hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: order.append(n)))
    try:
        out = unet(x, t, encoder_hidden_states=ctx).sample
    finally:
        for module, proc in saved:
            module.set_processor(proc)
        for h in hooks:
            h.remove()
    return out, probs, order


@torch.no_grad()
def monai_cross_attention(model, x, t, ctx) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, MONAI's own saved attention matrices [B, heads, N, T] of every ``attn2`` in execution order)."""
    probs: list[torch.Tensor] = []
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("attn2"):
            module.save_attn = True
            hooks.append(module.register_forward_hook(lambda m, a, o: probs.append(m.att_mat.clone())))
    try:
        out = model(x, timesteps=t, context=ctx)
    finally:
        for h in hooks:
            h.remove()
    return out, probs


# ------------------------------------------------------------------ folders on disk
def write_text_encoder(root: Path, hidden: int = 128) -> None:
    """A tiny CLIP text encoder + closed-vocabulary tokenizer as ``root/text_encoder`` and ``root/tokenizer``."""
    from groundiff_core.models.text import small_text_encoder, word_tokenizer

    tok = word_tokenizer(TEXT_WORDS)
    text = small_text_encoder(len(tok), hidden_size=hidden, layers=1, heads=2, seed=3)
    text.save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")


def write_checkpoints(root: Path, layout: str = "generative", in_models: bool = True, **ae_overrides):
    """Random scaled-width MONAI networks saved as ``diffusion_model.pth`` and ``autoencoder.pth`` in
    ``root/models`` (or ``root``), in the old GenerativeModels or the MONAI-core state-dict layout.

    Returns ``(monai_unet, monai_autoencoder)`` with the weights that were saved.
    """
    root.mkdir(parents=True, exist_ok=True)
    unet = monai_unet()
    ae = monai_autoencoder(**ae_overrides)
    u_state, a_state = unet.state_dict(), ae.state_dict()
    if layout == "generative":
        u_state, a_state = to_generative_layout(u_state, "unet"), to_generative_layout(a_state, "autoencoder")
    models = root / "models" if in_models else root
    models.mkdir(exist_ok=True)
    torch.save(u_state, models / "diffusion_model.pth")
    torch.save(a_state, models / "autoencoder.pth")
    return unet, ae


def write_paper_dir(root: Path, layout: str = "generative", bundle_layout: bool = True, **ae_overrides):
    """The paper's files at scaled width: ``models/*.pth`` (or top level) + text encoder + tokenizer.

    Returns ``(monai_unet, monai_autoencoder)`` with the weights that were saved.
    """
    nets = write_checkpoints(root, layout, bundle_layout, **ae_overrides)
    write_text_encoder(root)
    return nets


def load_scaled_paper(root: Path, **kw):
    """``load_model`` on a folder from :func:`write_paper_dir` with the scaled configuration."""
    from groundiff_core.models.loading import load_model

    ae = {k: v for k, v in AE_KW.items() if not k.startswith("with_")}
    return load_model(root, unet_config=UNET_KW, autoencoder_config=ae, input_size=IMAGE, **kw)


def write_sd_dir(root: Path, prediction_type: str = "epsilon", seed: int = 0):
    """A tiny Stable-Diffusion-layout folder (3-channel VAE, random weights); returns its components."""
    from diffusers import DDIMScheduler

    from groundiff_core.models.architectures import paper_layout_unet, small_vae
    from groundiff_core.models.text import small_text_encoder, word_tokenizer

    tok = word_tokenizer(TEXT_WORDS)
    text = small_text_encoder(len(tok), hidden_size=32, layers=1, heads=2, seed=seed)
    vae = small_vae(channels=(8, 16), in_channels=3, latent_channels=4, norm_groups=4, seed=seed + 1)
    vae.register_to_config(scaling_factor=0.2)
    unet = paper_layout_unet(16, channels=(16, 32, 32), in_channels=4, cross_attention_dim=32, seed=seed + 2)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type=prediction_type)
    root.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    tok.save_pretrained(root / "tokenizer")
    sched.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False}))
    return dict(unet=unet, vae=vae, text_encoder=text, tokenizer=tok)
