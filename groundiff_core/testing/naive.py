"""A deliberately naive implementation of the paper's Algorithm 1, for tests and benchmarks only.

Written straight from METHOD.md and independently of the engine (it imports nothing from
``groundiff_core``; its preprocessing and back-projection are ``reference``'s): one phrase at a time, every
step of the schedule, both prompts ``["", phrase]`` stacked in every UNet call, every
cross-attention probability tensor of every layer and step stored (on the CPU), and everything
aggregated at the end. Slow and memory-hungry on purpose: it is the yardstick.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from skimage.filters import threshold_multiotsu

from groundiff_core.testing.reference import back_project, preprocess


class StoringProcessor:
    """Classic attention with explicit probabilities; keeps a copy of every cross-attention map."""

    def __init__(self, sink: list):
        self.sink = sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        b, n, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        h = attn.heads
        d = q.shape[-1] // h
        q = q.reshape(b, n, h, d).permute(0, 2, 1, 3)
        k = k.reshape(b, -1, h, d).permute(0, 2, 1, 3)
        v = v.reshape(b, -1, h, d).permute(0, 2, 1, 3)
        work = torch.promote_types(q.dtype, torch.float32)
        probs = torch.softmax((q.to(work) @ k.to(work).transpose(2, 3)) * attn.scale, dim=-1)  # [b, h, n, T]
        if is_cross:
            self.sink.append(probs.detach().cpu().clone())
        out = (probs.to(v.dtype) @ v).permute(0, 2, 1, 3).reshape(b, n, h * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def trailing_timesteps(num_inference_steps: int, num_train: int = 1000) -> list[int]:
    """999, 996, ..., 0 for 300 steps (ratio 1000 // 300), returned ascending."""
    ratio = num_train // num_inference_steps
    return list(range(num_train - 1, -1, -ratio))[::-1]


@torch.no_grad()
def naive_ground(model, image01: np.ndarray, phrase: str, *, num_inference_steps: int = 300,
                 window: tuple[int, int] = (120, 180), layers=(3, 4, 6, 7), sigma_fraction: float | None = 2.5 / 512,
                 otsu: bool = True, guidance_scale: float = 0.0, return_stored: bool = False):
    """Heatmap ``[H, W]`` (original grid) and raw mean map ``[S, S]`` of one phrase, the slow way."""
    unet = model.unet
    size = model.input_size
    x = preprocess(np.asarray(image01, dtype=np.float32), size).clamp(0, 1).to(model.device)
    z = model.encode_image(x).to(torch.promote_types(model.dtype, torch.float32))
    context = model.encode_text(["", phrase])
    abar = model.schedule.alphas_cumprod()
    ts = trailing_timesteps(num_inference_steps, model.schedule.num_train_timesteps)

    original = dict(unet.attn_processors)
    per_call: list = []
    unet.set_attn_processor({name: StoringProcessor(per_call) if ".attn2." in name else proc
                             for name, proc in original.items()})
    stored = []  # stored[step][layer] = probs [2, heads, hw, T]
    try:
        for i, t in enumerate(ts):
            per_call.clear()
            out = unet(torch.cat([z, z]).to(model.dtype), t, encoder_hidden_states=context).sample.to(z.dtype)
            stored.append(list(per_call))
            uncond, cond = out[0:1], out[1:2]
            pred = uncond + guidance_scale * (cond - uncond)
            a_prev = float(abar[ts[i - 1]]) if i > 0 else 1.0
            a_t = float(abar[t])
            if model.schedule.prediction_type == "v_prediction":
                x0 = a_prev ** 0.5 * z - (1 - a_prev) ** 0.5 * pred
                eps = a_prev ** 0.5 * pred + (1 - a_prev) ** 0.5 * z
            else:
                eps = pred
                x0 = (z - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
            z = a_t ** 0.5 * x0 + (1 - a_t) ** 0.5 * eps
    finally:
        unet.set_attn_processor(original)

    n_tokens = len(model.tokenizer(phrase)["input_ids"])
    maps = []
    for step in range(window[0], window[1]):
        for layer in layers:
            probs = stored[step][layer][1]  # conditional row: [heads, hw, T]
            m = probs[:, :, 1:n_tokens - 1].mean(dim=-1).mean(dim=0)
            side = int(round(m.numel() ** 0.5))
            m = m.reshape(side, side)
            m = (m - m.min()) / (m.max() - m.min())
            m = F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
            maps.append(m)
    raw = torch.stack(maps).mean(dim=0).numpy().astype(np.float64)
    smooth = gaussian_filter(raw, sigma=sigma_fraction * size) if sigma_fraction else raw.copy()
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    final = smooth * (smooth > threshold_multiotsu(smooth, classes=2)[0]) if otsu else smooth
    heat = back_project(final.astype(np.float32), *np.asarray(image01).shape)
    if return_stored:
        return heat, raw.astype(np.float32), stored
    return heat, raw.astype(np.float32)
