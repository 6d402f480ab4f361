"""Eager against ``torch.compile`` d engine passes on the CPU: time per image and the maps' difference.

    .venv/bin/python benchmarks/bench_compile.py --out benchmarks/results/compile_cpu.json

The phantom model (the book's), the paper preset, K phrases on one phantom image: the first
compiled call (compilation included), the fastest of ``--repeats`` later calls, the fastest eager
call, and the largest difference of the raw maps and heatmaps. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import groundiff_core as gd
from groundiff_core.phantom.generator import SPLIT_SEEDS, make_phantom


def _timed(call):
    t0 = time.perf_counter()
    out = call()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2, help="phrases per image")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="paper", choices=["paper", "fast"])
    ap.add_argument("--out", default="benchmarks/results/compile_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = gd.load_model("phantom")
    phantom = make_phantom(SPLIT_SEEDS["test"])  # a test-split phantom (never seen in training)
    image = phantom.image
    phrases = ([f.phrase for f in phantom.findings] + ["left pleural effusion", "cardiomegaly", "mild edema"])[:args.k]
    cfg = gd.GroundingConfig.preset(args.preset)
    eager = gd.Grounder(model, cfg)
    eager_s = min(_timed(lambda: eager.ground(image, phrases, return_raw=True))[0] for _ in range(args.repeats))
    ref = eager.ground(image, phrases, return_raw=True)
    comp = gd.Grounder(model, cfg, compile=True)
    first_s, got = _timed(lambda: comp.ground(image, phrases, return_raw=True))
    later_s = min(_timed(lambda: comp.ground(image, phrases, return_raw=True))[0] for _ in range(args.repeats))
    out = {
        "phrases": phrases,
        "what": f"Grounder.ground of one test phantom ({image.shape[0]} px), {args.k} phrases, {args.preset} preset, phantom model",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "eager_s": round(eager_s, 3), "compiled_first_call_s": round(first_s, 2),
        "compiled_s": round(later_s, 3), "speedup": round(eager_s / later_s, 3),
        "raw_max_abs_diff": float(np.abs(got.raw - ref.raw).max()),
        "heatmap_max_abs_diff": float(np.nanmax(np.abs(got.heatmaps - ref.heatmaps))),
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
