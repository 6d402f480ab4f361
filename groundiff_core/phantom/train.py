"""Train the phantom LDM: ``python -m groundiff_core.phantom.train --out DIR``.

The defaults are the shipped model's recipe, sized for two CPU cores (72 min there); ``--device cuda``
runs the same recipe on a GPU (same seeds, not bit-identical to a CPU run).

Three stages, each resumable from ``DIR/checkpoint.pt`` (an interrupted run loses at most
``--save-every`` steps; rerun the same command to continue):

1. ``vae``: the KL autoencoder on phantom images (L1 reconstruction + a small KL term).
2. ``encode``: the training set's latents (posterior means); the latent scale factor is set to
   ``1 / std`` so the scaled latents have unit variance.
3. ``unet``: the UNet and the text encoder jointly, v-prediction with the paper's noise schedule
   (diffusers' ``DDPMScheduler`` adds the noise and gives the velocity target), AdamW with a
   warm-up then cosine learning rate (a torch ``LambdaLR``), an EMA of the weights (diffusers'
   ``EMAModel``), which is what gets exported.
   Captions: 45% one finding's phrase (the sentences that are later grounded), 45% the whole report
   (so each finding's words must be routed to its own region), 10% the empty string (the
   unconditional prompt used by the inversion). The conditioning is zero after the end token
   (``LDM.zero_padding``), so a phrase reaches the image only through its own tokens.

Losses go to ``DIR/train_log.jsonl``; the final model is written in the shipped layout (a diffusers
pipeline folder, :func:`~groundiff_core.phantom.model.save_phantom`) to ``DIR/model`` (and, with
``--install``, into the package's weights folder). Everything is seeded: the same command gives the
same weights on the same machine. A finished run given more ``--unet-steps`` trains on to them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from groundiff_core.phantom.generator import make_phantom, train_seeds
from groundiff_core.phantom.model import WEIGHTS_DIR, PhantomSpec, build_phantom, noise_scheduler, save_phantom

VAE_WARMUP = 50     # steps of linear learning-rate warm-up, autoencoder
UNET_WARMUP = 100   # ... UNet and text encoder, then a cosine decay to LR_FLOOR of the peak
LR_FLOOR = 0.1
EMA_DECAY = 0.999   # the EMA's decay, reached by diffusers' (1 + step) / (10 + step) ramp


def _log(out: Path, **row) -> None:
    with open(out / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def make_dataset(seeds: Sequence[int]) -> tuple[np.ndarray, list[list[str]]]:
    """Images ``[n, 1, S, S]`` float32 and, per image, the list of its findings' phrases."""
    imgs, phrases = [], []
    for s in seeds:
        ph = make_phantom(s)
        imgs.append(ph.image[None])
        phrases.append([f.phrase for f in ph.findings])
    return np.stack(imgs).astype(np.float32), phrases


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _check_architecture(vae: tuple[int, ...], unet: tuple[int, ...], heads: tuple[int, ...]) -> str | None:
    """Why these widths cannot make a phantom model in the paper's layout (None if they can)."""
    if len(unet) != 3 or len(heads) != 3:
        return (f"--unet-channels and --unet-heads need 3 values (the paper's 3 UNet levels), got "
                f"{len(unet)} and {len(heads)}")
    if any(c % 16 for c in unet):
        return f"--unet-channels must be multiples of 16 (group norm), got {unet}"
    if any(h < 1 or c % h for c, h in zip(unet, heads)):
        return f"each UNet level's channels must divide into its heads, got {unet} / {heads}"
    if not vae or any(c % 8 for c in vae):
        return f"--vae-channels must be multiples of 8 (group norm), got {vae}"
    return None


def warmup(steps: int) -> Callable[[int], float]:
    """Learning-rate factor of a linear warm-up over ``steps`` steps (for ``LambdaLR``)."""
    return lambda step: min(1.0, (step + 1) / steps)


def warmup_cosine(warm: int, total: int, floor: float = LR_FLOOR) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warm`` steps times a cosine from 1 to ``floor`` at ``total``."""
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warm) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))

    return factor


CAPTIONS = (0.45, 0.45, 0.10)  # shares of captions: one finding's phrase, the whole report, empty


def caption(rng: np.random.Generator, phrases: list[str], mix: Sequence[float] = CAPTIONS) -> str:
    """A training caption: one of the image's phrases, all of them in a random order (" . "-joined),
    or the empty prompt, drawn with the shares ``mix`` (an image with one finding gets its phrase)."""
    u = rng.random()
    if u < mix[2]:
        return ""
    if u < mix[2] + mix[0] or len(phrases) == 1:
        return phrases[rng.integers(len(phrases))]
    order = rng.permutation(len(phrases))
    return " . ".join(phrases[j] for j in order)


def _mix(text: str) -> tuple[float, float, float]:
    try:
        mix = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers PHRASE,REPORT,EMPTY, got {text!r}") from None
    if len(mix) != 3 or min(mix) < 0 or abs(sum(mix) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three shares >= 0 that sum to 1 (PHRASE,REPORT,EMPTY), got {text!r}")
    return mix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="working directory (checkpoints, logs)")
    ap.add_argument("--seed", type=int, default=0, help="initialisation and data seed (>= 0); the "
                    "training phantoms never overlap the validation or test split, whatever the seed")
    ap.add_argument("--n-train", type=int, default=6000, help="training phantoms (train split seeds)")
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--unet-steps", type=int, default=2000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (the recipe's target) or cuda")
    default = PhantomSpec()
    ap.add_argument("--vae-channels", type=_ints, default=default.vae_channels,
                    help="autoencoder widths; len - 1 halvings (default %(default)s)")
    ap.add_argument("--unet-channels", type=_ints, default=default.unet_channels)
    ap.add_argument("--unet-heads", type=_ints, default=default.unet_heads)
    ap.add_argument("--captions", type=_mix, default=CAPTIONS, metavar="PHRASE,REPORT,EMPTY",
                    help="shares of training captions that are one finding's phrase, the whole report and "
                    "the empty prompt (default %(default)s)")
    ap.add_argument("--stop-after", type=int, metavar="STEP", help="stop the UNet stage at this step (exported "
                    "as DIR/model-STEP); the same command without it, or with a later step, trains on. The "
                    "learning-rate schedule is always the one of --unet-steps")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--export-every", type=int, default=500, help="write DIR/model-STEP snapshots")
    ap.add_argument("--install", action="store_true", help="copy the final model into the package")
    ap.add_argument("--init-vae", type=Path, help="start from this trained model's autoencoder and "
                    "skip the autoencoder stage")
    args = ap.parse_args(argv)
    problem = _check_architecture(args.vae_channels, args.unet_channels, args.unet_heads)
    if problem:
        ap.error(problem)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device is available here")
    try:
        seeds = train_seeds(args.seed, args.n_train)
    except ValueError as e:
        ap.error(f"--seed {args.seed} / --n-train {args.n_train}: {e}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    spec = PhantomSpec(vae_channels=args.vae_channels, unet_channels=args.unet_channels,
                       unet_heads=args.unet_heads)
    dev = torch.device(args.device)
    ldm = build_phantom(spec, seed=args.seed)
    ldm.to(dev)
    vae, unet, text = ldm.vae, ldm.unet, ldm.text_encoder
    ck_path = out / "checkpoint.pt"
    state = {"stage": "vae", "step": 0, "scale_factor": 1.0, "wall": 0.0}
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched_vae = torch.optim.lr_scheduler.LambdaLR(opt_vae, warmup(VAE_WARMUP))
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(UNET_WARMUP, args.unet_steps))
    ema = EMAModel(params, decay=EMA_DECAY, foreach=True)
    if ck_path.exists():
        ck = torch.load(ck_path, weights_only=False, map_location=dev)  # our own file, written below
        if not isinstance(ck.get("ema"), dict) or "sched" not in ck:
            ap.error(f"{ck_path} was written by an older version of this script (its own EMA and learning-rate "
                     "code); start in a new --out folder")
        vae.load_state_dict(ck["vae"]); unet.load_state_dict(ck["unet"]); text.load_state_dict(ck["text"])
        opt_vae.load_state_dict(ck["opt_vae"]); opt.load_state_dict(ck["opt"])
        sched_vae.load_state_dict(ck["sched_vae"]); sched.load_state_dict(ck["sched"])
        ema.load_state_dict(ck["ema"])
        state = ck["state"]
        torch.set_rng_state(ck["torch_rng"].cpu())
        print(f"resumed at stage {state['stage']} step {state['step']}", flush=True)
        if state["stage"] == "done" and state["step"] < args.unet_steps:  # train on to the new step count
            state["stage"] = "unet"

    def checkpoint() -> None:
        _save_atomic({"vae": vae.state_dict(), "unet": unet.state_dict(), "text": text.state_dict(),
                      "opt_vae": opt_vae.state_dict(), "opt": opt.state_dict(), "sched_vae": sched_vae.state_dict(),
                      "sched": sched.state_dict(), "ema": ema.state_dict(), "state": state,
                      "torch_rng": torch.get_rng_state()}, ck_path)

    if args.init_vae is not None and state["stage"] == "vae":
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(args.init_vae / "vae").float().state_dict())
        vae.to(dev)
        state.update(stage="encode", step=0)
        _log(out, stage="vae", init_from=str(args.init_vae))
    t_start = time.time() - state["wall"]
    print(f"generating {args.n_train} training phantoms", flush=True)
    images, phrases = make_dataset(seeds)
    images_t = torch.from_numpy(images).to(dev)

    # ---------------------------------------------------------------- stage 1: autoencoder
    if state["stage"] == "vae":
        vae.train()
        rng = np.random.default_rng(args.seed * 7 + state["step"])
        while state["step"] < args.vae_steps:
            idx = rng.integers(0, len(images), args.vae_batch)
            x = images_t[torch.from_numpy(idx).to(dev)]
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
            l1 = (rec - x).abs().mean()
            kl = post.kl().mean() / x[0].numel()
            loss = l1 + 1e-4 * kl
            opt_vae.zero_grad(set_to_none=True)
            loss.backward()
            opt_vae.step()
            sched_vae.step()
            state["step"] += 1
            if state["step"] % 20 == 0:
                state["wall"] = time.time() - t_start
                _log(out, stage="vae", step=state["step"], l1=float(l1), kl=float(kl), wall=state["wall"])
                print(f"vae {state['step']}/{args.vae_steps} l1={float(l1):.4f} kl={float(kl):.3f}", flush=True)
            if state["step"] % args.save_every == 0:
                checkpoint()
        state.update(stage="encode", step=0)
        checkpoint()

    # ---------------------------------------------------------------- stage 2: latents
    lat_path = out / "latents.pt"
    if state["stage"] == "encode" or not lat_path.exists():
        vae.eval()
        with torch.no_grad():
            lat = torch.cat([vae.encode(images_t[i:i + 64]).latent_dist.mean
                             for i in range(0, len(images_t), 64)])
        std = float(lat.std())
        state["scale_factor"] = 1.0 / std
        torch.save(lat.cpu(), lat_path)
        _log(out, stage="encode", latent_std=std, scale_factor=state["scale_factor"])
        print(f"latents {tuple(lat.shape)} std={std:.4f} -> scale factor {state['scale_factor']:.4f}", flush=True)
        if state["stage"] == "encode":
            state.update(stage="unet", step=0)
        checkpoint()
    latents = torch.load(lat_path).to(dev) * state["scale_factor"]

    # ---------------------------------------------------------------- stage 3: UNet + text encoder
    ldm.scale_factor = state["scale_factor"]
    noise_sched = noise_scheduler(ldm.schedule)
    T = noise_sched.config.num_train_timesteps
    unet.train(); text.train()
    vae.eval()
    stop = args.unet_steps if args.stop_after is None else min(args.stop_after, args.unet_steps)
    while state["stage"] == "unet" and state["step"] < stop:
        step = state["step"]
        rng = np.random.default_rng(args.seed * 1_000_003 + step)
        lr = sched.get_last_lr()[0]
        idx = rng.integers(0, len(latents), args.unet_batch)
        z0 = latents[torch.from_numpy(idx).to(dev)]
        caps = [caption(rng, phrases[i], args.captions) for i in idx]
        ids = ldm.tokenize(caps)["input_ids"].to(dev)
        cond = text(input_ids=ids).last_hidden_state
        if ldm.zero_padding:
            cond = cond * ldm.content_mask(ids).unsqueeze(-1).float()
        t = torch.from_numpy(rng.integers(0, T, args.unet_batch)).long().to(dev)
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(dev)
        zt = noise_sched.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise_sched.get_velocity(z0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        state["step"] += 1
        if state["step"] % 20 == 0:
            state["wall"] = time.time() - t_start
            _log(out, stage="unet", step=state["step"], loss=float(loss), lr=lr, wall=state["wall"])
            print(f"unet {state['step']}/{args.unet_steps} loss={float(loss):.4f} "
                  f"wall={state['wall'] / 60:.1f}min", flush=True)
        if state["step"] % args.save_every == 0:
            checkpoint()
        if state["step"] % args.export_every == 0 or state["step"] in (args.unet_steps, stop):
            _export(ldm, params, ema, out / f"model-{state['step']:05d}", state, args, spec)
    if state["stage"] == "unet" and state["step"] < args.unet_steps:  # --stop-after: checkpointed, resumable
        state["wall"] = time.time() - t_start
        checkpoint()
        print(f"stopped after step {state['step']} of {args.unet_steps} (--stop-after); rerun to train on", flush=True)
        return 0
    if state["stage"] == "unet":
        state["stage"] = "done"
        state["wall"] = time.time() - t_start
        checkpoint()
    final = _export(ldm, params, ema, out / "model", state, args, spec)
    if args.install:
        import shutil

        if WEIGHTS_DIR.exists():
            shutil.rmtree(WEIGHTS_DIR)
        shutil.copytree(final, WEIGHTS_DIR)
        print(f"installed into {WEIGHTS_DIR}", flush=True)
    return 0


def _export(ldm, params, ema: EMAModel, path: Path, state: dict, args, spec: PhantomSpec) -> Path:
    """Write the EMA weights in the shipped layout; the training weights are put back afterwards."""
    ema.store(params)
    ema.copy_to(params)
    ldm.scale_factor = state["scale_factor"]
    extra = {
        "seed": args.seed, "n_train": args.n_train, "vae_steps": args.vae_steps,
        "vae_init": str(args.init_vae) if args.init_vae else None,
        "unet_steps": state["step"],  # the steps trained, also when a finished run is exported again
        "unet_batch": args.unet_batch, "lr": args.lr, "threads": args.threads,
        "captions": {"phrase": args.captions[0], "report": args.captions[1], "empty": args.captions[2]},
        "schedule_steps": args.unet_steps,
        "train_wall_seconds": round(state["wall"], 1),
        "hardware": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                     else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"),
        "device": args.device,
        "torch": torch.__version__,
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()},
    }
    save_phantom(ldm, path, extra)
    ema.restore(params)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
