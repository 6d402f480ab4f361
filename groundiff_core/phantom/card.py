"""Evaluate the phantom LDM and write its model card: ``python -m groundiff_core.phantom.card``.

Generates a phantom test set from the test split's seeds (never used in training), evaluates the
cross-attention method with the paper's preset and the two text-blind baselines through the same
runner as ``groundiff evaluate`` (resumable: rerun to continue), and writes ``evaluation.json`` and
``MODEL_CARD.md`` next to the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from groundiff_core.phantom.model import WEIGHTS_DIR

TARGETS = {"auc": 0.85, "miou": 0.25, "cnr_abs": 1.0, "text_sensitivity": 0.80}


def alt_config(layers: tuple[int, ...]):
    """The paper's preset reading other cross-attention layers (chosen on validation phantoms)."""
    from groundiff_core.engine.config import GroundingConfig

    return GroundingConfig.paper().with_layers(layers)


def run_evaluation(work: Path, n_images: int, shard: str | None, weights: Path,
                   alt_layers: tuple[int, ...] | None = None, alt_pairs: int | None = None,
                   device: str | None = None, batch_images: int = 1) -> dict[str, dict]:
    """Evaluate ldm/random/centre (and ``ldm-alt``) on the phantom test split; return the summaries."""
    from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.io.datasets import load_dataset
    from groundiff_core.evaluation import evaluate
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.phantom.generator import write_phantom_set
    from groundiff_core.phantom.model import load_phantom

    data = work / "testset"
    csv = data / "annotations.csv"
    if not csv.exists():
        write_phantom_set(data, n_images, split="test")
    pairs = load_dataset("phantom", csv, data)
    model = load_phantom(weights, device=device)
    methods = {
        "ldm": (Grounder(model, GroundingConfig.paper(), batch_size=batch_images), None),
        "random": (RandomHeatmap(seed=0), None),
        "centre": (CentrePrior(), None),
    }
    if alt_layers:
        methods["ldm-alt"] = (Grounder(model, alt_config(alt_layers), batch_size=batch_images), alt_pairs)
    out = {}
    for name, (method, n_pairs) in methods.items():
        folder = work / (name if shard is None else f"{name}-{shard.replace('/', 'of')}")
        out[name] = evaluate(method, pairs, folder, dataset={"name": "phantom", "split": "test"},
                             shard=shard, n_pairs=n_pairs, progress=True,
                             batch_images=batch_images if name.startswith("ldm") else 1,
                             info={"device": str(model.device) if name.startswith("ldm") else "cpu"})
    return out


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean", stat.get("value")) is None:
        return "n/a"
    v = stat.get("mean", stat.get("value"))
    return f"{v:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def _geometry(meta: dict) -> dict:
    """Latent and attention-grid sizes of the model described by ``phantom.json``."""
    from groundiff_core.phantom.model import PhantomSpec

    spec = meta.get("spec", {})
    latent = PhantomSpec(image_size=int(meta.get("input_size", 128)),
                         vae_channels=tuple(spec.get("vae_channels", PhantomSpec.vae_channels))).latent_size
    return {"factor": int(meta.get("input_size", 128)) // latent, "latent": latent,
            "mid": latent // 2, "deep": latent // 4}


def _alt_note(summaries: dict[str, dict], meta: dict) -> str:
    if "ldm-alt" not in summaries:
        return ""
    p, a = summaries["ldm"]["class_averaged"], summaries["ldm-alt"]["class_averaged"]
    alt = summaries["ldm-alt"].get("config", {}).get("layers", "other")
    return f"""
The second row reads other cross-attention layers ({alt}, chosen on validation phantoms, never on
the test set) with the paper's window and post-processing: AUC-ROC {a['auc']['mean']:.3f} vs
{p['auc']['mean']:.3f}, mIoU {a['miou']['mean']:.3f} vs {p['miou']['mean']:.3f}, abs CNR
{a['cnr_abs']['mean']:.3f} vs {p['cnr_abs']['mean']:.3f}. The book's ablation notebook shows the
whole L/T grid.
"""


def _command(meta: dict) -> str:
    """The training command that reproduces the shipped model (from its recorded settings)."""
    spec = meta.get("spec", {})
    parts = ["python -m groundiff_core.phantom.train --out DIR", f"--lr {meta.get('lr')}",
             f"--threads {meta.get('threads')}"]
    for key in ("vae_channels", "unet_channels", "unet_heads"):
        if key in spec:
            parts.append(f"--{key.replace('_', '-')} {','.join(str(v) for v in spec[key])}")
    parts.append(f"--unet-steps {meta.get('unet_steps')} --install")
    return " ".join(parts)


def write_card(summaries: dict[str, dict], weights: Path) -> Path:
    meta = json.loads((weights / "phantom.json").read_text())
    ldm = summaries["ldm"]
    rows = []
    labels = [("ldm", "cross-attention, paper preset")]
    if "ldm-alt" in summaries:
        alt = summaries["ldm-alt"]["config"]["layers"] if "config" in summaries["ldm-alt"] else "other"
        labels.append(("ldm-alt", f"cross-attention, paper preset but layers {tuple(alt)} "
                                  f"({summaries['ldm-alt']['n_pairs']} pairs)"))
    labels += [("centre", "centre prior"), ("random", "uniform random")]
    for name, label in labels:
        s = summaries[name]["class_averaged"]
        rows.append(f"| {label} | {_fmt(s['auc'])} | {_fmt(s['miou'])} | {_fmt(s['cnr_abs'])} | "
                    f"{_fmt(summaries[name]['text_sensitivity'])} |")
    reached = {
        "auc": ldm["class_averaged"]["auc"]["mean"],
        "miou": ldm["class_averaged"]["miou"]["mean"],
        "cnr_abs": ldm["class_averaged"]["cnr_abs"]["mean"],
        "text_sensitivity": ldm["text_sensitivity"]["value"],
    }
    verdict = "\n".join(
        f"- {k}: {reached[k]:.3f} (target >= {t}) {'met' if reached[k] is not None and reached[k] >= t else 'NOT met'}"
        for k, t in TARGETS.items())
    per_class = "\n".join(
        f"| {c} | {v['n_pairs']} | {_fmt(v['auc'])} | {_fmt(v['miou'])} | {_fmt(v['cnr_abs'])} |"
        for c, v in sorted(ldm["per_class"].items()))
    spec = meta.get("spec", {})
    geo = _geometry(meta)
    where = ldm.get("info", {}).get("device") or "cpu"
    trained_on = meta.get("hardware")
    card = f"""# Phantom LDM — model card

A small latent diffusion model trained by this project on its synthetic chest phantoms, so that the
paper's zero-shot grounding method can be run offline, on CPU, in minutes. **It is a test bed, not a
medical model**: it has never seen a real radiograph, and its numbers are not comparable with the
paper's MS-CXR figures.

## Model
- Autoencoder: diffusers `AutoencoderKL`, channels {spec.get('vae_channels')}, no attention,
  1 input channel, {spec.get('latent_channels')} latent channels, {geo['factor']}x downsampling ({meta['input_size']} -> {geo['latent']});
  latent scale factor {meta['scale_factor']:.4f} (1 / std of the training latents).
- UNet: diffusers `UNet2DConditionModel` in the paper's layout (3 levels, cross-attention at the two
  deeper ones, 2 res blocks per level: 11 cross-attention layers; layers 2 to 7 run at the deepest
  resolution, {geo['deep']}x{geo['deep']} (the paper's preset reads 3, 4, 6, 7 of them), layers 0, 1, 8, 9, 10
  at {geo['mid']}x{geo['mid']}), channels {spec.get('unet_channels')},
  heads {spec.get('unet_heads')}.
- Text: a `CLIPTextModel` ({spec.get('text_layers')} layers, hidden {spec.get('text_hidden')}) trained
  from scratch with the UNet, and a closed-vocabulary `CLIPTokenizer` (start/end tokens, 77-token
  padding); the conditioning is zero after the end token (`zero_padding`).
- Noise schedule: the paper's (1000 steps, scaled-linear betas 0.0015..0.0205), v-prediction;
  input range [0, 1]; 128x128 input. Weights stored as float16 safetensors, loaded as float32.

## Training
- Data: {meta.get('n_train')} phantoms from the train split's seeds (`groundiff_core.phantom.generator`),
  captions: one finding's phrase (45%), the whole report (45%), empty (10%).
- Autoencoder: {meta.get('vae_steps')} steps, batch 16 (L1 + 1e-4 KL){' (taken from an earlier run: ' + str(meta.get('vae_init')) + ')' if meta.get('vae_init') else ''}.
- UNet + text encoder: {meta.get('unet_steps')} steps, batch {meta.get('unet_batch')}, AdamW lr {meta.get('lr')}
  (warm-up, cosine), EMA of the weights; seed {meta.get('seed')}.
- Wall time {meta.get('train_wall_seconds', 0) / 60:.0f} min in all on {trained_on} ({meta.get('threads')} threads),
  torch {meta.get('torch')}. Command: `{_command(meta)}`.

## Evaluation
`groundiff evaluate --model phantom --dataset phantom` with the paper's preset on {ldm['n_pairs']} image-phrase
pairs of a phantom test set from seeds never used in training (`groundiff phantom --split test`),
class-averaged (unweighted mean over the 8 categories), 95% bootstrap confidence intervals.
Text sensitivity: share of comparisons, on images with another finding, in which the heatmap's
AUC-ROC on its own phrase's boxes beats its AUC-ROC on the other finding's boxes.

| method | AUC-ROC | mIoU | abs CNR | text sensitivity |
|---|---|---|---|---|
{chr(10).join(rows)}

Each class-averaged figure against the threshold set for this test bed:
{verdict}

{_alt_note(summaries, meta)}
Per class (cross-attention, paper preset):

| category | pairs | AUC-ROC | mIoU | abs CNR |
|---|---|---|---|---|
{per_class}

Evaluated on {where} ({ldm.get('hardware', {}).get('cpu') or ldm.get('versions', {}).get('processor') or platform.machine()}), {ldm.get('seconds_per_pair', float('nan')):.2f} s per pair.
"""
    path = weights / "MODEL_CARD.md"
    path.write_text(card)
    keep = {k: {"class_averaged": s["class_averaged"], "text_sensitivity": s["text_sensitivity"],
                "n_pairs": s["n_pairs"], "per_class": s["per_class"]} for k, s in summaries.items()}
    (weights / "evaluation.json").write_text(json.dumps(keep, indent=1, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="folder for the test set and results")
    ap.add_argument("--images", type=int, default=220, help="test phantoms (about 2 pairs each)")
    ap.add_argument("--shard", help="i/n: evaluate only this shard (run n processes, then --merge)")
    ap.add_argument("--merge", action="store_true", help="merge the shards' results and write the card")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--alt-layers", help="also evaluate the paper's preset with these layers, e.g. 8,9,10 "
                                         "(choose them on validation phantoms, never on the test set)")
    ap.add_argument("--alt-pairs", type=int, help="pairs for the --alt-layers evaluation (default all)")
    ap.add_argument("--device", help="cpu (default) or cuda")
    ap.add_argument("--batch-images", type=int, default=1, help="images per inversion batch (GPU throughput)")
    a = ap.parse_args(argv)
    alt = tuple(int(x) for x in a.alt_layers.split(",")) if a.alt_layers else None
    names = ["ldm", "random", "centre"] + (["ldm-alt"] if alt else [])
    if a.merge:
        from groundiff_core.evaluation import merge

        summaries = {name: merge([a.work / f"{name}-{i}of{a.shards}" for i in range(a.shards)],
                                 a.work / name) for name in names}
    else:
        summaries = run_evaluation(a.work, a.images, a.shard, a.weights, alt, a.alt_pairs, a.device,
                                   a.batch_images)
        if a.shard:
            return 0
    print(write_card(summaries, a.weights).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
