"""Benchmark: the grounding engine against the naive Algorithm 1 (``groundiff_core/testing/naive.py``), on CPU.

Part 1, the benchmark model: a randomly initialised model with the paper's UNet layout that is large
enough for compute to dominate (128 x 128 input, UNet channels 32/64/64, latent 32 x 32). Per image,
for K = 1 and K = 4 phrases, for

* ``engine``: the engine, paper preset (334 trailing steps, window [120, 180), layers 3, 4, 6, 7),
  conditional early exit on (the default);
* ``engine-noexit``: the same without the early exit (conditional rows batched with the
  unconditional one through the whole UNet): what splitting the call costs or saves;
* ``engine-fast``: the engine with ``GroundingConfig.fast()`` (100 steps, window [40, 60));
* ``naive``: Algorithm 1 done the slow way, paper preset;

it measures UNet sample-evaluations (a forward pre-hook counts the batch size of every UNet call;
truncated conditional passes count as one each), wall-clock and process CPU time of the grounding
call (fastest of ``--repeats`` runs, methods alternating, each run in a fresh single-threaded
process, so CPU time is the robust figure on a shared machine), the bytes held for the attention
recording (engine: its running sums; naive: every stored map) and the process's peak resident set.
A run with a three-times wider window (180 steps) shows that the engine's recording memory does not
depend on the number of steps.

Part 2, the paper's UNet at the paper's width (``MonaiUNetConfig.paper()``: channels 256/512/768,
cross-attention dim 1024, latent 3 x 64 x 64 for 512 px images) with random weights: the CPU time
of ONE full UNet pass and ONE conditional pass truncated after layer 7 (batch 1), and from them the
projected CPU time per image-phrase pair of each method (passes x time per pass; CPU compute is
close to linear in the batch).

Usage::

    python benchmarks/bench_engine.py [--images 1] [--ks 1,4] [--repeats 2] [--skip-paper-unet]
                                      [--out benchmarks/results/engine_cpu.json]

Targets (issue 14), reported, not asserted: CPU-time ratio naive / engine (paper preset) at least 3
at K = 1 and at least 8 at K = 4; recording memory independent of the number of steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHRASES = ["left pleural effusion", "cardiomegaly", "right upper lobe opacity", "mild edema"]


def bench_model(image_size: int = 128):
    """Random LDM, paper layout: VAE 128 -> 32 (factor 4), UNet channels (32, 64, 64)."""
    from groundiff_core.models.architectures import TINY_VOCABULARY, paper_layout_unet, small_vae
    from groundiff_core.models.ldm import LDM, NoiseSchedule
    from groundiff_core.models.text import small_text_encoder, word_tokenizer

    tok = word_tokenizer(TINY_VOCABULARY)
    text = small_text_encoder(len(tok), hidden_size=64, layers=2, heads=4, seed=0)
    vae = small_vae(channels=(8, 16, 16), in_channels=1, latent_channels=3, norm_groups=4, seed=1)
    latent = image_size // 4
    unet = paper_layout_unet(latent, channels=(32, 64, 64), in_channels=3, cross_attention_dim=64, seed=2)
    return LDM(unet=unet, vae=vae, tokenizer=tok, text_encoder=text, schedule=NoiseSchedule(),
               scale_factor=0.3, input_size=image_size, input_range=(0.0, 1.0), image_channels=1,
               name="bench-random-128")


def bench_images(n: int, size: int = 128):
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        f = rng.uniform(3, 9, size=2)
        img = 0.5 + 0.3 * np.sin(xx / f[0]) * np.cos(yy / f[1]) + 0.1 * rng.random((size, size))
        out.append(np.clip(img, 0, 1).astype(np.float32))
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


METHODS = ("engine", "engine-noexit", "engine-fast", "naive")
MAPS = Path(os.environ.get("TMPDIR", "/tmp"))


def child(method: str, k: int, n_images: int, window: tuple[int, int] | None, repeats: int,
          batch_images: int = 1) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import numpy as np
    import torch

    import groundiff_core.engine.grounder as grounder_module
    from groundiff_core.engine.aggregate import MapAccumulator
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.layers import cross_attention_layers
    from groundiff_core.testing.naive import naive_ground

    torch.manual_seed(0)
    model = bench_model()
    images = bench_images(n_images)
    cfg = GroundingConfig.fast() if method == "engine-fast" else GroundingConfig.paper()
    if window is not None:
        cfg = cfg.with_window(*window)
    cross_attention_layers(model.unet)  # its one dry forward pass is not part of the grounding cost
    counted = [0]
    # on time_proj, which every pass (whole or truncated) runs first: a hook on the UNet itself would
    # make the engine run whole passes (its truncated walk never calls unet.forward)
    model.unet.time_proj.register_forward_pre_hook(lambda m, args: counted.__setitem__(0, counted[0] + args[0].shape[0]))
    recording_bytes = [0]

    class Spy(MapAccumulator):
        def mean(self, size, mode="bilinear"):
            held = sum(t.numel() * t.element_size() for t in self.sums.values())
            recording_bytes[0] = max(recording_bytes[0], held)
            return super().mean(size, mode)

    grounder_module.MapAccumulator = Spy
    rss0 = _rss_bytes()
    walls, cpus, truncated = [], [], 0
    for _ in range(repeats):
        maps = []
        t0, c0 = time.perf_counter(), time.process_time()
        if method.startswith("engine"):
            g = grounder_module.Grounder(model, cfg, batch_size=batch_images, early_exit=method != "engine-noexit")
            # batch_images > 1: the engine packs that many images' rows into each UNet call
            maps += [h.heatmaps for h in g.ground_batch(images, [PHRASES[:k]] * len(images))]
            truncated = g.stats["unet_samples_truncated"]
        else:
            for img in images:
                per = []
                for phrase in PHRASES[:k]:
                    heat, _, stored = naive_ground(model, img, phrase, window=cfg.window, layers=cfg.layers,
                                                   return_stored=True)
                    held = sum(p.numel() * p.element_size() for step in stored for p in step)
                    recording_bytes[0] = max(recording_bytes[0], held)
                    del stored
                    per.append(heat)
                maps.append(np.stack(per))
        walls.append((time.perf_counter() - t0) / n_images)
        cpus.append((time.process_time() - c0) / n_images)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(MAPS / f"bench_engine_{method}_{k}.npy", np.stack(maps))
    return {"method": method, "k": k, "images": n_images,
            "batch_images": batch_images if method.startswith("engine") else 1, "preset": "fast" if method == "engine-fast" else "paper",
            "window": list(cfg.window), "unet_samples_per_image": counted[0] / n_images / repeats,
            "unet_samples_truncated_per_image": truncated / n_images,
            "wall_s_per_image": min(walls), "wall_s_per_image_all_runs": walls, "cpu_s_per_image": min(cpus),
            "cpu_s_per_image_all_runs": cpus, "recording_bytes": recording_bytes[0], "rss_before_bytes": rss0,
            "peak_rss_bytes": peak}


def paper_unet_child() -> dict:
    """CPU time of one full and one truncated (after layer 7) pass of the paper's UNet, batch 1."""
    import torch
    from diffusers import UNet2DConditionModel

    from groundiff_core.engine.layers import cross_attention_layers
    from groundiff_core.models.loading.monai_unet import MonaiUNetConfig
    from groundiff_core.engine.recording import AttentionRecorder

    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**MonaiUNetConfig.paper().to_diffusers(64)).eval()
    build_s = time.perf_counter() - t0
    layers = cross_attention_layers(unet)
    z = torch.randn(1, 3, 64, 64)
    ctx = torch.randn(1, 77, 1024)
    weights = torch.full((1, 77), 1 / 77)
    out = {"model": "MonaiUNetConfig.paper() as diffusers UNet2DConditionModel, random weights",
           "parameters": sum(p.numel() for p in unet.parameters()), "latent": [3, 64, 64], "input_px": 512,
           "build_s": build_s, "cross_attention_layers": len(layers)}
    with torch.no_grad():
        c0, t0 = time.process_time(), time.perf_counter()
        unet(z, 500, encoder_hidden_states=ctx, return_dict=False)
        out["full_pass_cpu_s"], out["full_pass_wall_s"] = time.process_time() - c0, time.perf_counter() - t0
        with AttentionRecorder([layers[i] for i in (3, 4, 6, 7)], lambda i, m: None) as rec:
            c0, t0 = time.process_time(), time.perf_counter()
            rec.read(unet, z, 500, ctx, weights)
            out["truncated_pass_cpu_s"], out["truncated_pass_wall_s"] = \
                time.process_time() - c0, time.perf_counter() - t0
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def project_paper_unet(unet: dict, ks: list[int]) -> dict:
    """Projected CPU seconds per image-phrase pair on the paper's UNet (passes x time per pass)."""
    full, trunc = unet["full_pass_cpu_s"], unet["truncated_pass_cpu_s"]
    rows = {}
    for k in ks:
        passes = {
            "naive": (668 * k, 0),  # 334 steps x ["", phrase], per phrase
            "engine": (179, 60 * k),
            "engine-noexit": (179 + 60 * k, 0),
            "engine-fast": (59, 20 * k),
        }
        secs = {m: (f * full + t * trunc) / k for m, (f, t) in passes.items()}
        rows[f"k{k}"] = {"cpu_s_per_pair": secs, "full_passes_per_image": {m: f for m, (f, _) in passes.items()},
                         "truncated_passes_per_image": {m: t for m, (_, t) in passes.items()},
                         "cpu_ratio_naive_over_engine": secs["naive"] / secs["engine"],
                         "cpu_ratio_naive_over_engine_fast": secs["naive"] / secs["engine-fast"]}
    return {"truncated_over_full": trunc / full, "projection": rows,
            "note": "single-threaded CPU seconds; a 1162-pair MS-CXR run with the paper preset and ~1.1 "
                    "phrases per image costs about 1162 x cpu_s_per_pair(K=1) on one core"}


def run_child(method: str, k: int, n_images: int, repeats: int, window=None, batch_images: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--k", str(k), "--images", str(n_images),
           "--repeats", str(repeats), "--batch-images", str(batch_images)]
    if window:
        cmd += ["--window", f"{window[0]}:{window[1]}"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if method == "paper-unet":
        print(f"  paper UNet ({result['parameters'] / 1e6:.0f} M parameters, latent 64x64): full pass "
              f"{result['full_pass_cpu_s']:.2f} s CPU, truncated after layer 7 {result['truncated_pass_cpu_s']:.2f} s "
              f"CPU, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        return result
    print(f"  {method:13s} K={k} window={result['window']}: {result['unet_samples_per_image']:.0f} evals "
          f"({result['unet_samples_truncated_per_image']:.0f} truncated), {result['wall_s_per_image']:.1f} s wall, "
          f"{result['cpu_s_per_image']:.1f} s CPU, recording {result['recording_bytes'] / 2**10:.1f} KiB, "
          f"peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    return result


def _best(results: list[dict]) -> dict:
    """Merge repeated measurements: fastest wall and CPU time, largest memory figures."""
    best = dict(results[0])
    best["wall_s_per_image_all_runs"] = [r["wall_s_per_image"] for r in results]
    best["cpu_s_per_image_all_runs"] = [r["cpu_s_per_image"] for r in results]
    best["wall_s_per_image"] = min(best["wall_s_per_image_all_runs"])
    best["cpu_s_per_image"] = min(best["cpu_s_per_image_all_runs"])
    for key in ("recording_bytes", "peak_rss_bytes"):
        best[key] = max(r[key] for r in results)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1, help="images per measurement")
    ap.add_argument("--ks", default="1,4", help="phrases per image, comma-separated")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs per measurement, methods alternating; the fastest is reported")
    ap.add_argument("--batch-images", type=int, default=1,
                    help="images whose rows the engine packs into one UNet call (the naive method takes one at a time)")
    ap.add_argument("--skip-paper-unet", action="store_true", help="leave out part 2 (the paper-width UNet)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_cpu.json"))
    ap.add_argument("--child", choices=[*METHODS, "paper-unet"], help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--window", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "paper-unet":
        print(json.dumps(paper_unet_child()))
        return 0
    if args.child:
        window = tuple(int(v) for v in args.window.split(":")) if args.window else None
        print(json.dumps(child(args.child, args.k, args.images, window, args.repeats, args.batch_images)))
        return 0

    import numpy as np
    import torch

    ks = [int(v) for v in args.ks.split(",")]
    print(f"groundiff engine benchmark: 128x128 input, UNet 32/64/64, latent 32x32, {args.images} image(s) "
          f"({args.batch_images} per engine UNet call), "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', '1')}", flush=True)
    rows = []
    for k in ks:
        # alternate the methods, each run in a fresh process, and keep each one's best: the machine
        # is shared, so a slow spell should not land on one method only
        runs = {m: [] for m in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                runs[method].append(run_child(method, k, args.images, 1, batch_images=args.batch_images))
        best = {m: _best(runs[m]) for m in METHODS}
        maps = {m: np.load(MAPS / f"bench_engine_{m}_{k}.npy") for m in METHODS}
        cpu = {m: best[m]["cpu_s_per_image"] for m in METHODS}
        engine, naive = best["engine"], best["naive"]
        rows.append({
            "k": k, "engine": engine, "engine_no_early_exit": best["engine-noexit"], "engine_fast": best["engine-fast"],
            "naive": naive,
            "target_evals": 180 + 60 * k, "naive_evals_expected": 668 * k,
            "evals_ok": engine["unet_samples_per_image"] <= 180 + 60 * k,
            "wall_ratio_naive_over_engine": naive["wall_s_per_image"] / engine["wall_s_per_image"],
            "cpu_ratio_naive_over_engine": cpu["naive"] / cpu["engine"],
            "cpu_ratio_target": 3.0 if k == 1 else 8.0 if k == 4 else None,
            "cpu_ratio_naive_over_engine_no_early_exit": cpu["naive"] / cpu["engine-noexit"],
            "cpu_ratio_naive_over_engine_fast": cpu["naive"] / cpu["engine-fast"],
            "early_exit_cpu_saving": 1.0 - cpu["engine"] / cpu["engine-noexit"],
            "max_abs_diff_engine_vs_naive": float(np.nanmax(np.abs(maps["engine"] - maps["naive"]))),
            "max_abs_diff_early_exit_vs_not": float(np.nanmax(np.abs(maps["engine"] - maps["engine-noexit"]))),
        })
        r = rows[-1]
        r["cpu_ratio_target_met"] = r["cpu_ratio_target"] is None or r["cpu_ratio_naive_over_engine"] >= r["cpu_ratio_target"]
        print(f"K={k}: evals {engine['unet_samples_per_image']:.0f} (naive {naive['unet_samples_per_image']:.0f}); "
              f"CPU-time ratio naive/engine {r['cpu_ratio_naive_over_engine']:.2f} (target >= {r['cpu_ratio_target']}), "
              f"without early exit {r['cpu_ratio_naive_over_engine_no_early_exit']:.2f}, fast preset "
              f"{r['cpu_ratio_naive_over_engine_fast']:.2f}; early exit saves {100 * r['early_exit_cpu_saving']:.0f} % "
              f"CPU; wall ratio {r['wall_ratio_naive_over_engine']:.2f}; max |engine - naive| "
              f"{r['max_abs_diff_engine_vs_naive']:.2e}, |exit - no exit| {r['max_abs_diff_early_exit_vs_not']:.2e}",
              flush=True)
    wide = run_child("engine", 1, args.images, 1, window=(0, 180), batch_images=args.batch_images)
    paper_k1 = next((r["engine"] for r in rows if r["k"] == 1), None)
    paper_unet = None
    if not args.skip_paper_unet:
        print("paper-width UNet at 512 px (random weights): one full and one truncated pass", flush=True)
        paper_unet = run_child("paper-unet", 1, 1, 1)
        paper_unet.update(project_paper_unet(paper_unet, ks))
        for key, proj in paper_unet["projection"].items():
            per = ", ".join(f"{m} {v:.0f} s" for m, v in proj["cpu_s_per_pair"].items())
            print(f"  projected CPU time per pair ({key}): {per}")
    result = {
        "benchmark": "engine vs naive Algorithm 1, CPU",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": os.environ.get("OMP_NUM_THREADS", "1"),
        "note": ("2-core machine shared with other work. CPU-time ratios are the robust figures: wall "
                 "time also holds stalls from other jobs (and, for the naive runs, from allocating ~330 MiB "
                 "of stored maps per phrase)."),
        "model": {"input_size": 128, "latent_size": 32, "unet_channels": [32, 64, 64], "cross_attention_layers": 11,
                  "weights": "random (seeded)"},
        "presets": {"paper": "334 trailing steps, window [120, 180), layers 3, 4, 6, 7",
                    "fast": "100 trailing steps, window [40, 60), layers 3, 4, 6, 7"},
        "images_per_measurement": args.images,
        "batch_images": args.batch_images,
        "repeats": args.repeats,
        "wall_time": "fastest of the repeats (methods alternate), seconds per image",
        "cpu_time": "process CPU time (single-threaded, so robust to other jobs on the machine), fastest repeat",
        "results": rows,
        "recording_memory_vs_steps": {
            "engine_window_60_steps_bytes": None if paper_k1 is None else paper_k1["recording_bytes"],
            "engine_window_180_steps_bytes": wide["recording_bytes"],
            "engine_window_180_steps_evals": wide["unet_samples_per_image"],
            "independent_of_steps": paper_k1 is not None and paper_k1["recording_bytes"] == wide["recording_bytes"],
        },
        "paper_unet_512": paper_unet,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"recording memory: {result['recording_memory_vs_steps']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
