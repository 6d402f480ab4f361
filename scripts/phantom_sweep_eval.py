"""Score trained phantom-model candidates on validation phantoms (model selection, not the card).

``python scripts/phantom_sweep_eval.py --data DIR --out results.json MODEL_DIR ...``

For each model folder (the training script's ``model`` or ``model-STEP`` exports), grounds the
validation pairs with a preset (``--preset``: paper or fast) and, with ``--all11``, the same preset
reading all 11 cross-attention layers, and prints the class-averaged AUC-ROC, mIoU, |CNR| and text
sensitivity. ``--prior`` adds the image-blind phrase prior (fitted on training phantoms) on the same
pairs, the baseline a recipe has to beat. Validation seeds only: the test split is kept for the
model card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="folder for the validation phantoms")
    ap.add_argument("--n-images", type=int, default=80)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="inference steps (default: the preset's)")
    ap.add_argument("--preset", choices=("paper", "fast"), default="paper")
    ap.add_argument("--all11", action="store_true", help="also read all 11 cross-attention layers")
    ap.add_argument("--prior", action="store_true", help="also score the phrase prior on the same pairs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()

    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.io.datasets import load_dataset
    from groundiff_core.evaluation import evaluate
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.phantom.generator import write_phantom_set
    from groundiff_core.phantom.model import load_phantom

    if args.threads:
        torch.set_num_threads(args.threads)
    csv = args.data / "annotations.csv"
    if not csv.exists():
        write_phantom_set(args.data, args.n_images, split="val")
    pairs = load_dataset("phantom", csv, args.data)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    base = GroundingConfig.preset(args.preset)
    configs = {args.preset: base}
    if args.all11:
        configs["all11"] = base.with_layers(tuple(range(11)))
    if args.prior and "phrase-prior" not in results:
        from groundiff_core.phantom.prior import phantom_prior

        s = evaluate(phantom_prior(), pairs, args.out.parent / "runs" / "phrase-prior",
                     dataset={"name": "phantom", "split": "val"}, progress=False, n_boot=200)
        results["phrase-prior"] = _short(s)
        args.out.write_text(json.dumps(results, indent=1))
        print("phrase-prior", json.dumps(_short(s)), flush=True)
    for model_dir in args.models:
        model = load_phantom(model_dir, device=args.device)
        for name, cfg in configs.items():
            if args.steps:
                cfg = cfg.with_steps(args.steps)
            key = f"{model_dir}:{name}"
            if key in results:
                continue
            t0 = time.time()
            s = evaluate(Grounder(model, cfg, batch_size=args.batch), pairs,
                         args.out.parent / "runs" / key.replace("/", "_").replace(":", "-"),
                         dataset={"name": "phantom", "split": "val"}, batch_images=args.batch,
                         progress=False, n_boot=200)
            row = {"seconds": round(time.time() - t0, 1), **_short(s)}
            results[key] = row
            args.out.write_text(json.dumps(results, indent=1))
            print(key, json.dumps(_short(s)), flush=True)
    return 0


def _short(summary: dict) -> dict:
    """Class-averaged metrics and the text sensitivity (point estimates)."""
    ca = summary["class_averaged"]
    out = {k: (ca[k]["mean"] if isinstance(ca[k], dict) else ca[k]) for k in ("auc", "miou", "cnr_abs", "pointing")}
    out["text_sensitivity"] = summary["text_sensitivity"]["value"]
    out["n_pairs"] = summary["n_pairs"]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
