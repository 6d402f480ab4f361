"""GPU benchmark at the paper's size: the engine against an authors-style run (never run in CI).

One prepared script for a machine with a CUDA GPU. The model is the paper's architecture with random
weights (grounding cost does not depend on the weights' values): the UNet of the MONAI chest X-ray
LDM (``MonaiUNetConfig.paper()``: channels 256/512/768, one head per attention layer,
cross-attention dim 1024, latent 3 x 64 x 64 for 512 px images), a CLIP text model of Stable
Diffusion 2.1's size (hidden 1024, 23 layers) and an autoencoder with the paper's channels
(64/128/128/128, 512 px -> 3 x 64 x 64; one res block per level where the paper's has two: it runs
once per image, next to 179+ UNet passes).

For float32 and a half type (bfloat16 by default, ``--half float16``; the engine's recorded softmax
is float32 in both) it measures, on the same synthetic image-phrase pairs (one phrase per image):

* ``engine``: :class:`groundiff_core.Grounder`, paper preset (and the fast preset), with batches
  of 1, 4 and 16 images per inversion (``ground_batch``);
* ``authors``: an authors-style run: every one of the 334 steps with both prompts ``["", phrase]``,
  explicit attention in every attention layer (self- and cross-attention) and every probability
  map copied to host memory at every step, aggregated at the end; one pair at a time;

and reports seconds per image-phrase pair, pairs per second, peak GPU memory, host memory the
authors-style run holds per pair, the projected time of a 1162-pair (MS-CXR-sized) run and the
speed-up. Results: ``benchmarks/results/engine_gpu.json``.

Goal at the paper's size in half precision (issue 14): at most 0.3 s per pair amortised (a 1162-pair
run under 6 minutes) and at least 20x the authors-style run.

Usage (the GPU command; see ``benchmarks/README.md``)::

    python benchmarks/bench_gpu.py --device cuda --out benchmarks/results/engine_gpu.json
    python benchmarks/bench_gpu.py --dry-run      # CPU, scaled-down model, 10 steps: checks the script (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PHRASES = ["left pleural effusion", "cardiomegaly", "right upper lobe opacity", "mild edema",
           "bilateral pleural effusion", "small left pneumothorax", "right lower lobe consolidation",
           "moderate edema"]
MSCXR_PAIRS = 1162


# ============================================================================ the model
def build_model(scaled_down: bool, seed: int = 0):
    """The paper-size model with random weights, or a small one with the same layout (dry run)."""
    from diffusers import UNet2DConditionModel

    from groundiff_core.models.architectures import TINY_VOCABULARY, paper_layout_unet, small_vae
    from groundiff_core.models.ldm import LDM, NoiseSchedule
    from groundiff_core.models.text import small_text_encoder, word_tokenizer

    torch.manual_seed(seed)
    tok = word_tokenizer(TINY_VOCABULARY)
    if scaled_down:
        size, latent = 32, 8
        unet = paper_layout_unet(latent, channels=(16, 32, 32), cross_attention_dim=32, seed=seed)
        text = small_text_encoder(len(tok), hidden_size=32, layers=1, heads=2, seed=seed)
        vae = small_vae(channels=(8, 16, 16), in_channels=1, latent_channels=3, norm_groups=4, seed=seed)
    else:
        from groundiff_core.models.loading.monai_unet import MonaiUNetConfig

        size, latent = 512, 64
        unet = UNet2DConditionModel(**MonaiUNetConfig.paper().to_diffusers(latent))
        # Stable Diffusion 2.1's text encoder size (OpenCLIP ViT-H text tower), random weights
        text = small_text_encoder(len(tok), hidden_size=1024, layers=23, heads=16, seed=seed)
        vae = small_vae(channels=(64, 128, 128, 128), in_channels=1, latent_channels=3, norm_groups=32, seed=seed)
    model = LDM(unet=unet.eval(), vae=vae.eval(), tokenizer=tok, text_encoder=text.eval(),
                schedule=NoiseSchedule(), scale_factor=0.3, input_size=size, input_range=(0.0, 1.0), image_channels=1,
                name="paper-size-random" if not scaled_down else "scaled-down-random")
    return model


def synthetic_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth random grayscale images (H = size, W = 1.2 size, so the crop path runs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:int(size * 1.2)]
    out = []
    for _ in range(n):
        f = rng.uniform(size / 40, size / 10, size=2)
        img = 0.5 + 0.3 * np.sin(xx / f[0]) * np.cos(yy / f[1]) + 0.05 * rng.random(xx.shape)
        out.append(np.clip(img, 0, 1).astype(np.float32))
    return out


# ============================================================================ timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


# ============================================================================ authors-style run
class StoreEverything:
    """Explicit attention in every attention layer; each probability map goes to host memory."""

    def __init__(self, store: list):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, n, _ = hidden_states.shape
        h = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        d = q.shape[-1] // h
        q, k, v = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
        probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)
        self.store.append(probs.to(q.dtype).cpu())  # the host copy at every step, as the authors' code
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, h * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


@torch.no_grad()
def authors_style(model, image: np.ndarray, phrase: str, cfg) -> tuple[np.ndarray, int]:
    """One pair the authors' way; returns the raw mean map and the host bytes held for it."""
    from groundiff_core.engine.inversion import DDIMInversion
    from groundiff_core.io.preprocess import prepare_image

    unet, device, dtype = model.unet, model.device, model.dtype
    x, _ = prepare_image(image, model.input_size, cfg.conventions)
    z = model.encode_image(x.to(device)).float()
    context = model.encode_text(["", phrase])
    sched = DDIMInversion(model.schedule, cfg)
    store: list = []
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: StoreEverything(store) for name in original})
    steps: list[list[torch.Tensor]] = []
    try:
        for i in range(len(sched)):
            store.clear()
            out = unet(torch.cat([z, z]).to(dtype), sched.timestep(i), encoder_hidden_states=context,
                       return_dict=False)[0]
            steps.append([p for p in store])
            z = sched.step(z, out[:1].float(), i)
    finally:
        unet.set_attn_processor(original)
    held = sum(p.numel() * p.element_size() for step in steps for p in step)
    # aggregate the window's cross-attention maps of the chosen layers (every 2nd stored map of a
    # transformer block is its cross-attention: attn1, attn2 alternate in execution order)
    n_tokens = model.phrase_token_count(phrase)
    maps = []
    for i in range(*cfg.window):
        cross = steps[i][1::2]
        for layer in cfg.layers:
            m = cross[layer][1, :, :, 1:n_tokens - 1].float().mean(dim=(0, 2))
            side = int(round(m.numel() ** 0.5))
            m = m.reshape(side, side)
            maps.append((m - m.min()) / (m.max() - m.min()))
    del steps
    return torch.stack([torch.nn.functional.interpolate(m[None, None], size=model.input_size, mode="bilinear",
                                                        align_corners=False)[0, 0]
                        for m in maps]).mean(0).numpy(), held


# ============================================================================ the measurements
def measure_engine(model, cfg, images, phrases, batch: int, device) -> dict:
    from groundiff_core.engine.grounder import Grounder

    g = Grounder(model, cfg, batch_size=batch)
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    results = g.ground_batch(images[:batch], [[p] for p in phrases[:batch]])
    _sync(device)
    seconds = time.perf_counter() - t0
    finite = all(np.isfinite(np.nan_to_num(r.heatmaps, nan=0.0)).all() and np.nanmax(r.heatmaps) > 0 for r in results)
    return {"batch_images": batch, "pairs": batch, "seconds": seconds, "s_per_pair": seconds / batch,
            "pairs_per_s": batch / seconds, "peak_gpu_bytes": _peak(device), "unet_calls": g.stats["unet_calls"],
            "unet_samples": g.stats["unet_samples"], "unet_samples_truncated": g.stats["unet_samples_truncated"],
            "maps_finite": bool(finite), f"projected_{MSCXR_PAIRS}_pairs_s": MSCXR_PAIRS * seconds / batch}


def measure_authors(model, cfg, images, phrases, n_pairs: int, device) -> dict:
    _reset_peak(device)
    _sync(device)
    t0 = time.perf_counter()
    held = 0
    for img, phrase in zip(images[:n_pairs], phrases[:n_pairs]):
        _, h = authors_style(model, img, phrase, cfg)
        held = max(held, h)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"pairs": n_pairs, "seconds": seconds, "s_per_pair": seconds / n_pairs, "pairs_per_s": n_pairs / seconds,
            "peak_gpu_bytes": _peak(device), "host_bytes_per_pair": held,
            f"projected_{MSCXR_PAIRS}_pairs_s": MSCXR_PAIRS * seconds / n_pairs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (cpu only with --dry-run)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU (one thread), scaled-down model (32 px), 10 inference steps, batches 1 and 2, one "
                    "authors-style pair: "
                    "checks the script end to end in under a minute")
    ap.add_argument("--half", choices=("bfloat16", "float16"), default="bfloat16", help="the half type measured")
    ap.add_argument("--batches", default="1,4,16", help="images per inversion for the engine")
    ap.add_argument("--authors-pairs", type=int, default=2, help="pairs for the authors-style run")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/engine_gpu.json, "
                    "or engine_gpu_dryrun.json with --dry-run)")
    args = ap.parse_args()

    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.layers import cross_attention_layers

    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device here; use --dry-run to check the script on CPU")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit(f"bench_gpu.py: --device {args.device} is not a GPU; the CPU figures are bench_engine.py's "
                         "(or use --dry-run)")
    batches = [int(b) for b in args.batches.split(",")]
    paper = GroundingConfig.paper()
    fast = GroundingConfig.fast()
    if args.dry_run:  # every code path, at a size that runs in well under a minute on a CPU
        paper, fast = paper.with_steps(10), fast.with_steps(10)
        batches = [1, 2]
        torch.set_num_threads(1)  # on a shared CPU, waiting OpenMP threads made it ~80x slower
        args.authors_pairs = 1
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "engine_gpu_dryrun.json" if args.dry_run else "engine_gpu.json")
    n = max(batches + [args.authors_pairs])
    t0 = time.perf_counter()
    model = build_model(scaled_down=args.dry_run)
    print(f"model built in {time.perf_counter() - t0:.1f} s ({sum(p.numel() for p in model.unet.parameters()) / 1e6:.0f} M "
          f"UNet parameters, input {model.input_size} px)", flush=True)
    images = synthetic_images(n, model.input_size)
    phrases = [PHRASES[i % len(PHRASES)] for i in range(n)]
    runs = []
    for dtype in (torch.float32, getattr(torch, args.half)):
        model.to(device=device, dtype=dtype)
        cross_attention_layers(model.unet)
        name = str(dtype).removeprefix("torch.")
        # warm-up of every batch shape (kernel selection, allocator), not timed
        from groundiff_core.engine.grounder import Grounder

        for bw in sorted(set(batches) | {2}):
            Grounder(model, paper.with_window(0, 2), batch_size=bw).ground_batch(
                images[:bw], [[p] for p in phrases[:bw]])
        row = {"dtype": name, "engine": {}, "engine_fast": {}}
        for b in batches:
            row["engine"][str(b)] = r = measure_engine(model, paper, images, phrases, b, device)
            print(f"{name} engine paper preset, {b:2d} images/batch: {r['s_per_pair']:.3f} s/pair, "
                  f"{r['pairs_per_s']:.2f} pairs/s, peak GPU {(r['peak_gpu_bytes'] or 0) / 2**30:.2f} GiB", flush=True)
        b = max(batches)
        row["engine_fast"][str(b)] = r = measure_engine(model, fast, images, phrases, b, device)
        print(f"{name} engine fast preset, {b:2d} images/batch: {r['s_per_pair']:.3f} s/pair", flush=True)
        row["authors"] = a = measure_authors(model, paper, images, phrases, args.authors_pairs, device)
        print(f"{name} authors-style: {a['s_per_pair']:.2f} s/pair, host memory per pair "
              f"{a['host_bytes_per_pair'] / 2**30:.2f} GiB", flush=True)
        best = min(row["engine"].values(), key=lambda r: r["s_per_pair"])
        row["speedup_best_engine_over_authors"] = a["s_per_pair"] / best["s_per_pair"]
        row["speedup_engine_batch1_over_authors"] = a["s_per_pair"] / row["engine"][str(batches[0])]["s_per_pair"]
        row["best_engine_s_per_pair"] = best["s_per_pair"]
        row[f"best_engine_projected_{MSCXR_PAIRS}_pairs_min"] = MSCXR_PAIRS * best["s_per_pair"] / 60
        runs.append(row)
        print(f"{name}: best engine {best['s_per_pair']:.3f} s/pair ({MSCXR_PAIRS} pairs in "
              f"{MSCXR_PAIRS * best['s_per_pair'] / 60:.1f} min), {row['speedup_best_engine_over_authors']:.1f}x the "
              "authors-style run", flush=True)
    half = runs[-1]
    result = {
        "benchmark": "engine vs authors-style run at the paper's size" + (" (DRY RUN: scaled-down, CPU)" if args.dry_run else ""),
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": model.name,
        "unet_parameters": sum(p.numel() for p in model.unet.parameters()),
        "input_px": model.input_size,
        "presets": {"paper": paper.to_dict(), "fast": fast.to_dict()},
        "pairs": "synthetic images, one phrase each; the same pairs for every method",
        "runs": runs,
        "goal": {"half_s_per_pair_max": 0.3, "speedup_min": 20,
                 "half_s_per_pair": half["best_engine_s_per_pair"],
                 "half_speedup": half["speedup_best_engine_over_authors"],
                 "met": (not args.dry_run) and half["best_engine_s_per_pair"] <= 0.3
                 and half["speedup_best_engine_over_authors"] >= 20},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
