"""Evaluate the phantom LDM and write its model card: ``python -m groundiff_core.phantom.card``.

Generates the phantom test split (seeds never used in training), evaluates through the same runner
as ``groundiff evaluate`` (resumable: rerun to continue):

* the cross-attention method with the paper's preset;
* the same on the image-shuffle control (each image's phrases grounded on another test image and
  scored on their own boxes there, :mod:`groundiff_core.evaluation.controls`), reusing the first
  run's inversions through an inversion cache;
* the image-blind phrase prior (fitted on training phantoms), the centre prior and a uniform
  random map;

then compares them on the same pairs (paired bootstrap intervals) and writes ``evaluation.json``
and ``MODEL_CARD.md`` next to the weights. ``--sweep`` adds the validation numbers of the training
recipes the model was chosen from.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from groundiff_core.phantom.model import WEIGHTS_DIR

#: What the test bed asks of the shipped model (the issue "does it read the image"): each checked
#: on the test split by a paired interval or a point figure, and stated as met or not.
TARGETS = {
    "miou_above_prior": "class-averaged mIoU above the phrase prior's (paired 95% interval of the difference above 0)",
    "auc_above_prior": "class-averaged AUC-ROC above the phrase prior's (paired 95% interval above 0)",
    "shuffle_drop": "mIoU drops when the phrases are grounded on another image (paired 95% interval above 0)",
    "text_sensitivity": "text sensitivity >= 0.85",
    "laterality": "pointing game on 'left ...' and 'right ...' phrases within 0.1 of each other",
}
NAMES = {"ldm": "cross-attention, paper preset", "ldm-shuffled": "the same, image-shuffle control",
         "phrase-prior": "phrase prior (image-blind)", "centre": "centre prior", "random": "uniform random"}


LDM_RUNS = ("ldm", "ldm-shuffled")  # the costly runs, which may be sharded over processes


def _shard_dir(work: Path, name: str, shard: str | None) -> Path:
    return work / (name if shard is None else f"{name}-{shard.replace('/', 'of')}")


def run_evaluation(work: Path, n_images: int, weights: Path, device: str | None = None,
                   batch_images: int = 1, command: str = "", only: tuple[str, ...] = tuple(NAMES),
                   shard: str | None = None) -> tuple[dict[str, dict], dict[str, list]]:
    """Evaluate the methods ``only`` of :data:`NAMES` on the phantom test split; the summaries and rows.

    ``shard`` ("i/n", the cross-attention runs only) evaluates that shard into ``NAME-iofn`` (merge
    with :func:`merge_shards`). The runs share one inversion cache: the image-shuffle control,
    run after the main run (all of its shards), inverts nothing again."""
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.engine.kept import InversionCache
    from groundiff_core.evaluation import evaluate, load_results
    from groundiff_core.evaluation.controls import CONTROL, shuffled_pairs
    from groundiff_core.io.datasets import load_dataset
    from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap
    from groundiff_core.phantom.generator import write_phantom_set
    from groundiff_core.phantom.model import load_phantom
    from groundiff_core.phantom.prior import phantom_prior

    data = work / "testset"
    csv = data / "annotations.csv"
    if not csv.exists():
        write_phantom_set(data, n_images, split="test")
    pairs = load_dataset("phantom", csv, data)
    model = load_phantom(weights, device=device)
    grounder = Grounder(model, GroundingConfig.paper(), batch_size=batch_images,
                        inversion_cache=InversionCache(work / "inversions"))
    runs = {"ldm": (grounder, pairs, {}), "ldm-shuffled": (grounder, shuffled_pairs(pairs, seed=0), {"control": CONTROL}),
            "phrase-prior": (phantom_prior(), pairs, {}), "centre": (CentrePrior(), pairs, {}),
            "random": (RandomHeatmap(seed=0), pairs, {})}
    summaries, rows = {}, {}
    for name in only:
        method, these, extra = runs[name]
        if shard is not None and name not in LDM_RUNS:
            raise ValueError(f"--shard applies to the cross-attention runs {LDM_RUNS}, not {name!r}")
        folder = _shard_dir(work, name, shard)
        summaries[name] = evaluate(method, these, folder, dataset={"name": "phantom", "split": "test", **extra},
                                   shard=shard, progress=True, batch_images=batch_images if name in LDM_RUNS else 1,
                                   info={"device": str(model.device) if name in LDM_RUNS else "cpu",
                                         "command": command})
        rows[name] = load_results(folder)
    return summaries, rows


def merge_shards(work: Path, shards: int) -> tuple[dict[str, dict], dict[str, list]]:
    """Merge the ``shards`` shard folders of each cross-attention run into ``work/NAME``."""
    from groundiff_core.evaluation import load_results, merge

    summaries, rows = {}, {}
    for name in LDM_RUNS:
        summaries[name] = merge([_shard_dir(work, name, f"{i}/{shards}") for i in range(shards)], work / name)
        rows[name] = load_results(work / name)
    return summaries, rows


def compare(rows: dict[str, list], summaries: dict[str, dict]) -> dict:
    """The paired comparisons and the targets' verdicts (:data:`TARGETS`)."""
    from groundiff_core.evaluation.compare import by_side, paired_difference, verdict

    prior = {m: paired_difference(rows["ldm"], rows["phrase-prior"], m) for m in ("miou", "auc", "cnr_abs")}
    shuffle = {m: paired_difference(rows["ldm"], rows["ldm-shuffled"], m) for m in ("miou", "auc", "cnr_abs")}
    side = by_side(rows["ldm"], "pointing")
    ts = summaries["ldm"]["text_sensitivity"]["value"]
    met = {"miou_above_prior": verdict(prior["miou"]) == "above 0", "auc_above_prior": verdict(prior["auc"]) == "above 0",
           "shuffle_drop": verdict(shuffle["miou"]) == "above 0", "text_sensitivity": ts is not None and ts >= 0.85,
           "laterality": side["difference"] is not None and abs(side["difference"]) <= 0.1}
    return {"ldm_minus_prior": prior, "shuffle_drop": shuffle, "pointing_by_side": side,
            "targets": {k: {"target": TARGETS[k], "met": bool(v)} for k, v in met.items()}}


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("mean", stat.get("value")) is None:
        return "n/a"
    v = stat.get("mean", stat.get("value"))
    return f"{v:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def _diff(d: dict) -> str:
    return "n/a" if d["difference"] is None else f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _geometry(meta: dict) -> dict:
    """Latent and attention-grid sizes of the model described by ``phantom.json``."""
    from groundiff_core.phantom.model import PhantomSpec

    spec = meta.get("spec", {})
    latent = PhantomSpec(image_size=int(meta.get("input_size", 128)),
                         vae_channels=tuple(spec.get("vae_channels", PhantomSpec.vae_channels))).latent_size
    return {"factor": int(meta.get("input_size", 128)) // latent, "latent": latent,
            "mid": latent // 2, "deep": latent // 4}


def _command(meta: dict) -> str:
    """The training command that reproduces the shipped model (from its recorded settings)."""
    spec, cap = meta.get("spec", {}), meta.get("captions") or {}
    parts = ["python -m groundiff_core.phantom.train --out DIR", f"--lr {meta.get('lr')}",
             f"--threads {meta.get('threads')}"]
    for key in ("vae_channels", "unet_channels", "unet_heads"):
        if key in spec:
            parts.append(f"--{key.replace('_', '-')} {','.join(str(v) for v in spec[key])}")
    if cap:
        parts.append(f"--captions {cap['phrase']},{cap['report']},{cap['empty']}")
    parts.append(f"--unet-steps {meta.get('schedule_steps', meta.get('unet_steps'))} --install")
    return " ".join(parts)


def _captions(meta: dict) -> str:
    cap = meta.get("captions") or {"phrase": 0.45, "report": 0.45, "empty": 0.10}
    return (f"one finding's phrase ({cap['phrase']:.0%}), the whole report ({cap['report']:.0%}), "
            f"empty ({cap['empty']:.0%})")


def _sweep_section(sweep: dict | None) -> str:
    if not sweep:
        return ""
    lines = ["## Recipe selection (validation phantoms, never the test split)", "",
             sweep.get("note", ""), "", "| candidate | AUC-ROC | mIoU | abs CNR | text sensitivity | pairs |",
             "|---|---|---|---|---|---|"]
    for name, r in sweep["candidates"].items():
        ts = "n/a" if r.get("text_sensitivity") is None else f"{r['text_sensitivity']:.3f}"
        lines.append(f"| {name} | {r['auc']:.3f} | {r['miou']:.3f} | {r['cnr_abs']:.3f} | {ts} | {r['n_pairs']} |")
    return "\n".join(lines) + "\n"


def write_card(summaries: dict[str, dict], comparison: dict, weights: Path, sweep: dict | None = None) -> Path:
    meta = json.loads((weights / "phantom.json").read_text())
    ldm = summaries["ldm"]
    rows = [f"| {NAMES[n]} | {s['n_pairs']} | {_fmt(s['class_averaged']['auc'])} | {_fmt(s['class_averaged']['miou'])} | "
            f"{_fmt(s['class_averaged']['cnr_abs'])} | {_fmt(s['text_sensitivity'])} |"
            for n, s in summaries.items()]
    names = {"miou": "mIoU", "auc": "AUC-ROC", "cnr_abs": "abs CNR"}
    prior = ", ".join(f"{names[m]} {_diff(d)}" for m, d in comparison["ldm_minus_prior"].items())
    shuffle = ", ".join(f"{names[m]} {_diff(d)}" for m, d in comparison["shuffle_drop"].items())
    side = comparison["pointing_by_side"]
    verdict = "\n".join(f"- {t['target']}: **{'met' if t['met'] else 'NOT met'}**"
                        for t in comparison["targets"].values())
    per_class = "\n".join(
        f"| {c} | {v['n_pairs']} | {_fmt(v['auc'])} | {_fmt(v['miou'])} | {_fmt(v['cnr_abs'])} | "
        f"{_fmt(summaries['phrase-prior']['per_class'].get(c, {}).get('miou'))} |"
        for c, v in sorted(ldm["per_class"].items()))
    spec = meta.get("spec", {})
    geo = _geometry(meta)
    where = ldm.get("info", {}).get("device") or "cpu"
    card = f"""# Phantom LDM — model card

A small latent diffusion model trained by this project on its synthetic chest phantoms (version 4:
the chest's pose and each finding's place vary, so a phrase does not give its box away), so that
the paper's zero-shot grounding method can be run offline, on CPU, in minutes. **It is a test bed,
not a medical model**: it has never seen a real radiograph, and its numbers are not comparable with
the paper's MS-CXR figures.

## Does it read the image?

On {ldm['n_pairs']} pairs of the phantom test split, against the image-blind phrase prior and the image-shuffle
control (paired 95% bootstrap intervals, class-averaged):
- cross-attention minus phrase prior: {prior};
- own image minus another image (image-shuffle drop): {shuffle};
- pointing game on phrases naming the patient's left: {_fmt(side['left'])} ({side['left']['n_pairs']} pairs),
  right: {_fmt(side['right'])} ({side['right']['n_pairs']} pairs).

Against the targets set for this test bed:
{verdict}

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
  captions: {_captions(meta)}.
- Autoencoder: {meta.get('vae_steps')} steps, batch 16 (L1 + 1e-4 KL){' (taken from an earlier run of the sweep)' if meta.get('vae_init') else ''}.
- UNet + text encoder: {meta.get('unet_steps')} steps, batch {meta.get('unet_batch')}, AdamW lr {meta.get('lr')}
  (warm-up, cosine over {meta.get('schedule_steps', meta.get('unet_steps'))} steps), EMA of the weights; seed {meta.get('seed')}.
- Wall time {meta.get("train_wall_seconds", 0) / 60:.0f} min in all (autoencoder, latents, UNet) on {meta.get('hardware')} ({meta.get('threads')} threads),
  torch {meta.get('torch')}. Command: `{_command(meta)}`.

{_sweep_section(sweep)}
## Evaluation
`python -m groundiff_core.phantom.card` (the runner of `groundiff evaluate`) with the paper's preset on
{ldm['n_pairs']} image-phrase pairs of the phantom test split (`groundiff phantom --n 220 --split test`,
seeds never used in training), class-averaged (unweighted mean over the 8 categories), 95% bootstrap
confidence intervals. Text sensitivity: share of comparisons, on images with another finding, in
which the heatmap's AUC-ROC on its own phrase's boxes beats its AUC-ROC on the other finding's boxes.
The phrase prior maps each phrase to the mean box of its nearest training phrases (3000 training
phantoms), without the image; the image-shuffle control grounds each image's phrases on another
test image and scores them on their own boxes there.

| method | pairs | AUC-ROC | mIoU | abs CNR | text sensitivity |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Per class (cross-attention, paper preset; last column: the phrase prior's mIoU):

| category | pairs | AUC-ROC | mIoU | abs CNR | prior mIoU |
|---|---|---|---|---|---|
{per_class}

Evaluated on {where} ({platform.machine()}), {ldm.get('seconds_per_pair') or float('nan'):.2f} s per pair.
"""
    path = weights / "MODEL_CARD.md"
    path.write_text(card)
    keep = {k: {"class_averaged": s["class_averaged"], "text_sensitivity": s["text_sensitivity"],
                "n_pairs": s["n_pairs"], "per_class": s["per_class"]} for k, s in summaries.items()}
    (weights / "evaluation.json").write_text(json.dumps({"methods": keep, "comparison": comparison}, indent=1,
                                                        default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="folder for the test set and results")
    ap.add_argument("--images", type=int, default=220, help="test phantoms (about 2 pairs each)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--sweep", type=Path, help="the recipe sweep's validation numbers (JSON) to state in the card")
    ap.add_argument("--device", help="cpu (default) or cuda")
    ap.add_argument("--batch-images", type=int, default=1, help="images per inversion batch")
    ap.add_argument("--only", choices=tuple(NAMES), action="append", help="evaluate only this method (repeatable); "
                    "no card is written")
    ap.add_argument("--shard", help="i/n: evaluate this shard of the cross-attention runs (with --only); then --merge")
    ap.add_argument("--merge", type=int, metavar="N", help="merge the N shards of the cross-attention runs, "
                    "evaluate the rest and write the card")
    a = ap.parse_args(argv)
    import sys

    command = " ".join(["python -m groundiff_core.phantom.card", *(sys.argv[1:] if argv is None else argv)])
    if a.only:
        run_evaluation(a.work, a.images, a.weights, a.device, a.batch_images, command, tuple(a.only), a.shard)
        return 0
    if a.merge:
        summaries, rows = merge_shards(a.work, a.merge)
        rest = tuple(n for n in NAMES if n not in LDM_RUNS)
        s2, r2 = run_evaluation(a.work, a.images, a.weights, a.device, a.batch_images, command, rest)
        summaries, rows = {n: {**summaries, **s2}[n] for n in NAMES}, {**rows, **r2}
    else:
        summaries, rows = run_evaluation(a.work, a.images, a.weights, a.device, a.batch_images, command)
    sweep = json.loads(a.sweep.read_text()) if a.sweep else None
    print(write_card(summaries, compare(rows, summaries), a.weights, sweep).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
