"""Quick check of a phantom-model snapshot during training: AUC-ROC, mIoU, |CNR| and text sensitivity
on a few validation phantoms (validation seeds, never used in training), paper preset.

    python scripts/probe_phantom.py work_phantom/run1/model-00500 --images 16
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import groundiff_core as gd
from groundiff_core.evaluation import metrics
from groundiff_core.phantom.generator import SPLIT_SEEDS, make_phantom
from groundiff_core.phantom.model import load_phantom


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_phantom(a.model)
    cfg = gd.GroundingConfig.paper()
    if a.steps != 300:
        cfg = cfg.with_steps(a.steps)
    g = gd.Grounder(model, cfg)
    rows, sens = [], []
    t0 = time.time()
    for i in range(a.images):
        ph = make_phantom(SPLIT_SEEDS["val"] + i)
        hm = g.ground(ph.image, [f.phrase for f in ph.findings])
        for k, f in enumerate(ph.findings):
            h = hm.heatmaps[k]
            rows.append((f.category, metrics.auc_roc(h, f.boxes), metrics.miou(h, f.boxes), metrics.cnr(h, f.boxes)))
            for j, o in enumerate(ph.findings):
                if j != k:
                    sens.append(metrics.auc_roc(h, f.boxes) > metrics.auc_roc(h, o.boxes))
    auc = np.nanmean([r[1] for r in rows]); miou = np.nanmean([r[2] for r in rows]); cnr = np.nanmean([r[3] for r in rows])
    out = {"model": a.model, "pairs": len(rows), "auc": round(float(auc), 3), "miou": round(float(miou), 3),
           "cnr": round(float(cnr), 3), "text_sensitivity": round(float(np.mean(sens)), 3) if sens else None,
           "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
