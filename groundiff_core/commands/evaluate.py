"""``groundiff evaluate``: a grounding method on a dataset -> results.jsonl, summary.json/.csv.

Examples::

    groundiff evaluate --model phantom --dataset phantom --csv data/test/annotations.csv --out runs/ldm
    groundiff evaluate --method centre --dataset mscxr --csv MS_CXR_Local_Alignment_v1.1.0.csv \\
        --images /data/mimic-cxr-jpg --split test --out runs/centre
    groundiff evaluate ... --shard 0/4 --out runs/ldm/shard0     # 4 processes, one folder each
    groundiff evaluate --merge runs/ldm/shard* --out runs/ldm/all
    groundiff evaluate --method phrase-prior --dataset phantom --csv data/test/annotations.csv --out runs/prior
    groundiff evaluate --method phrase-prior --dataset mscxr ... --out runs/prior   # 5-fold cross-fitted
    groundiff evaluate --model phantom ... --control image-shuffle --out runs/ldm-shuffled
    torchrun --nproc_per_node 4 -m groundiff_core.cli evaluate ... --out runs/ldm   # 4 ranks, merged

A rerun with the same ``--out`` resumes where the last one stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from groundiff_core.commands import add_model_options, model_options, silence_progress_bars
from groundiff_core.evaluation.distributed import clear_shard_done, launch_rank, mark_shard_done, shard_folder, wait_for_shards

METHODS = ("ldm", "random", "centre", "phrase-prior")
PRESETS = ("paper", "fast")  # GroundingConfig.preset(name)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a grounding method on a dataset (resumable; shard/merge)",
        description="Ground every image-phrase pair of a dataset and compute the paper's metrics "
        "(mIoU, AUC-ROC exact and binned, |CNR|, signed CNR, pointing game) with bootstrap 95% "
        "CIs. Results are appended to OUT/results.jsonl as each pair finishes; rerunning with the "
        "same --out resumes. OUT/summary.json and OUT/summary.csv hold the summary.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (resumed if it exists)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                   help="combine the folders of a sharded run into --out (no grounding)")
    p.add_argument("--allow-partial", action="store_true", help="with --merge: merge even when a shard is "
                   "unfinished or missing, or the shard counts differ; the summary is then marked partial")
    p.add_argument("--model", help="model source for --method ldm: 'phantom', 'tiny', or a path "
                   "(see groundiff doctor)")
    add_model_options(p)
    p.add_argument("--dataset", choices=("mscxr", "vindr", "nih", "phantom"),
                   help="annotation layout of --csv ('phantom' = MS-CXR layout from groundiff phantom)")
    p.add_argument("--csv", type=Path, help="annotation CSV")
    p.add_argument("--images", type=Path, help="image root (MIMIC-CXR-JPG root for MS-CXR; "
                   "default for phantom: the CSV's folder)")
    p.add_argument("--split", help="keep only this split (MS-CXR v1.1.0 / phantom CSVs)")
    p.add_argument("--method", choices=METHODS, default="ldm",
                   help="ldm = the paper's cross-attention grounding (default); random / centre = "
                   "reference baselines")
    p.add_argument("--prior", type=Path, metavar="FILE", help="for --method phrase-prior: a prior file "
                   "written by PhrasePrior.save (default: fitted on the phantom's training phantoms for "
                   "--dataset phantom; else on --prior-train, or cross-fitted on the evaluated CSV)")
    p.add_argument("--prior-train", type=Path, metavar="CSV", help="for --method phrase-prior: fit the prior "
                   "on this training CSV (same layout as --csv, images under --images)")
    p.add_argument("--prior-folds", type=int, default=5, metavar="K", help="for --method phrase-prior without "
                   "--prior or --prior-train: cross-fit in K folds grouped by image (default 5)")
    p.add_argument("--strict", action="store_true", help="exit with an error (after writing the results) when "
                   "any pair was skipped or dropped; by default only a run that evaluated nothing fails")
    p.add_argument("--tokens", choices=("phrase", "class-name"), default="phrase",
                   help="for --method ldm: read every phrase token (the method, default) or only the tokens of the "
                   "pair's class name (the JBHI paper's Table III; a phrase without its class name gets an empty map)")
    p.add_argument("--control", choices=("image-shuffle",), help="image-shuffle: ground each image's phrases on "
                   "another image of the dataset (seeded by --seed) and score them on their own boxes mapped to "
                   "that image: what a method loses here is the part of its score that comes from the image")
    p.add_argument("--preset", choices=PRESETS, default="paper",
                   help="grounding settings: paper (default) or fast (100 steps, the window scaled to keep the "
                   "paper's proportions, about 3x cheaper)")
    p.add_argument("--conventions", choices=("paper", "strict"), default="paper",
                   help="paper (default): metrics, resize and back-projection exactly as the authors' "
                   "evaluation computed them; strict: ground truth on valid pixels only, independent "
                   "CNR per box, NaN for undefined values, the exact crop inverse")
    p.add_argument("--steps", type=int, help="inference steps instead of the preset's (the window "
                   "keeps its place as a share of the steps; for quick runs)")
    p.add_argument("--n-pairs", type=int, help="evaluate a seeded random subset of N pairs")
    p.add_argument("--shard", help="i/n: this process takes images j with j %% n == i (0-based); under "
                   "torchrun (RANK/WORLD_SIZE set) each rank takes its shard into OUT/shard-RANK-of-N and "
                   "rank 0 merges them into OUT")
    p.add_argument("--merge-timeout", type=float, default=3600.0, metavar="S",
                   help="under torchrun: how long rank 0 waits, after its own shard, for the others "
                   "(default 3600 s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, the bootstrap and the "
                   "random baseline (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--batch-images", type=int, default=1, metavar="B",
                   help="images per inversion batch for --method ldm (accelerator throughput; default 1)")
    p.add_argument("--inversion-cache", type=Path, metavar="DIR", help="for --method ldm: keep each image's "
                   "inversion in DIR (content-keyed, off by default): another run on the same images, model and "
                   "steps (other phrases, the image-shuffle control, another window) skips them")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (neither the evaluation's nor the model loading's)")
    p.set_defaults(func=run)


def build_prior(args: argparse.Namespace, pairs):
    """The phrase prior the options ask for: a file, fitted on a training CSV, the phantom's own
    (training phantoms), or cross-fitted on the evaluated pairs."""
    from groundiff_core.methods.prior import CrossFittedPrior, PhrasePrior

    if args.prior is not None:
        return PhrasePrior.load(args.prior)
    if args.prior_train is not None:
        from groundiff_core.io.datasets import load_dataset

        return PhrasePrior.fit(load_dataset(args.dataset, args.prior_train, args.images))
    if args.dataset == "phantom":
        from groundiff_core.phantom.prior import phantom_prior

        return phantom_prior(progress=not args.no_progress)
    return CrossFittedPrior.fit(pairs, folds=args.prior_folds, seed=args.seed, progress=not args.no_progress)


def build_method(args: argparse.Namespace, pairs=()):
    """The grounding method the options ask for (``pairs``: the evaluated dataset, which a
    cross-fitted phrase prior is fitted on)."""
    from groundiff_core.methods.baselines import CentrePrior, RandomHeatmap

    if args.method != "ldm" and (args.model or args.steps or args.text_encoder or getattr(args, "inversion_cache", None)
                                 or getattr(args, "cache_dir", None) or getattr(args, "no_cache", False)):
        raise ValueError(f"--model, --text-encoder, --cache-dir, --no-cache, --steps and --inversion-cache apply "
                         f"to --method ldm, "
                         f"not {args.method!r}")
    if args.method != "ldm" and getattr(args, "tokens", "phrase") != "phrase":
        raise ValueError(f"--tokens applies to --method ldm, not {args.method!r}")
    if args.method != "phrase-prior" and (getattr(args, "prior", None) or getattr(args, "prior_train", None)):
        raise ValueError(f"--prior and --prior-train apply to --method phrase-prior, not {args.method!r}")
    if args.method == "random":
        return RandomHeatmap(seed=args.seed)
    if args.method == "centre":
        return CentrePrior()
    if args.method == "phrase-prior":
        return build_prior(args, pairs)
    if not args.model:
        raise ValueError("--method ldm needs --model (e.g. --model phantom)")
    from groundiff_core.engine.config import GroundingConfig
    from groundiff_core.engine.grounder import Grounder
    from groundiff_core.models.loading import load_model, resolve_device

    device = resolve_device(args.device)  # an unavailable device is refused before the model loads
    model = load_model(args.model, **model_options(args))
    model.to(device)
    config = GroundingConfig.preset(args.preset)
    if args.steps is not None:
        config = config.with_steps(args.steps)
    config = replace(config, conventions=args.conventions)
    cache = None
    if getattr(args, "inversion_cache", None) is not None:
        from groundiff_core.engine.kept import InversionCache

        cache = InversionCache(args.inversion_cache)
    # --batch-images B: the B images of a ground_batch call share every UNet call (one inversion)
    grounder = Grounder(model, config, batch_size=args.batch_images, inversion_cache=cache)
    if getattr(args, "tokens", "phrase") == "class-name":
        from groundiff_core.methods.class_tokens import ClassNameTokens

        return ClassNameTokens(grounder, {p.phrase: p.category for p in pairs})
    return grounder


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad option values before any work (a bad --bootstrap used to fail after the run)."""
    for flag, value in (("--bootstrap", args.bootstrap), ("--batch-images", args.batch_images),
                        ("--n-pairs", args.n_pairs)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is an existing file; evaluate writes a folder there")
    if args.merge:
        for d in args.merge:
            if not d.is_dir():
                raise FileNotFoundError(f"--merge: shard folder not found: {d}")


def _strict(summary: dict) -> int:
    """``--strict``: 0 only when no pair was skipped or dropped; else one line naming the first."""
    sk, dr = summary["skipped"], summary.get("dropped", {"n_pairs": 0, "pairs": []})
    if not sk["n_pairs"] and not dr["n_pairs"]:
        return 0
    first = (f"{sk['images'][0]['reason']}: {sk['images'][0]['image_path']}" if sk["images"]
             else dr["pairs"][0]["reason"] if dr["pairs"] else "see summary.json")
    raise ValueError(f"--strict: {sk['n_pairs']} pair(s) skipped and {dr['n_pairs']} dropped (first: {first}); "
                     "every evaluated pair is in results.jsonl and the summary was written")


def _require_results(summary: dict, hint: str) -> int:
    """0, or a clear error when nothing was evaluated (every pair skipped or dropped)."""
    if summary["n_pairs"]:
        return 0
    sk, dr = summary["skipped"], summary.get("dropped", {"n_pairs": 0, "pairs": []})
    why = ""
    if sk["images"]:
        first = sk["images"][0]
        why = f"; e.g. {first['reason']}: {first['image_path']}"
    elif dr["pairs"]:
        why = f"; e.g. {dr['pairs'][0]['reason']}"
    raise ValueError(f"evaluated no pair: {sk['n_pairs']} skipped, {dr['n_pairs']} dropped at load "
                     f"time{why}; {hint}")


# options of an evaluation that a merge cannot honour, with their defaults
_EVALUATION_ONLY = {"model": None, "text_encoder": None, "dataset": None, "csv": None, "images": None, "split": None,
                    "method": "ldm", "prior": None, "prior_train": None, "prior_folds": 5, "control": None,
                    "preset": "paper", "conventions": "paper", "steps": None, "n_pairs": None, "shard": None,
                    "batch_images": 1, "inversion_cache": None, "cache_dir": None, "no_cache": False,
                    "tokens": "phrase", "strict": False}


def run(args: argparse.Namespace) -> int:
    from groundiff_core import evaluation as ev

    if args.merge:
        # a merge reads what the shards ran; an option of the evaluation itself would be silently ignored
        ignored = [f"--{name.replace('_', '-')}" for name, default in _EVALUATION_ONLY.items()
                   if getattr(args, name, default) != default]
        if ignored:
            raise ValueError(f"--merge joins finished shards as they were run; {', '.join(ignored)} "
                             "would be ignored: drop it, or evaluate again without --merge")
    check_args(args)
    if args.merge:
        with warnings.catch_warnings():  # the API's warning; the command says it in its PARTIAL line
            warnings.filterwarnings("ignore", message="partial merge")
            summary = ev.merge(args.merge, args.out, n_boot=args.bootstrap, seed=args.seed,
                               allow_partial=args.allow_partial)
        _report(summary, args.out)
        return _require_results(summary, "check the shard folders")
    missing = [f"--{n}" for n in ("dataset", "csv") if getattr(args, n) is None]
    if missing:
        raise ValueError(f"evaluate needs {' and '.join(missing)} (or --merge DIR...)")
    from groundiff_core.io.datasets import load_dataset

    shard = ev.parse_shard(args.shard)  # check before the (slow) model load
    launch = _launch(args)
    out = args.out
    if launch is not None:  # torchrun & co.: this rank's shard, in a folder of its own
        shard, out = launch.shard, shard_folder(args.out, *launch.shard)
        if out.is_dir():
            clear_shard_done(out)
    pairs = load_dataset(args.dataset, args.csv, args.images, split=args.split)
    if not pairs:
        raise ValueError(f"{args.csv}: no image-phrase pairs to evaluate")
    if args.prior_folds < 2:
        raise ValueError(f"--prior-folds must be at least 2, got {args.prior_folds}")
    if args.no_progress and args.method == "ldm":
        silence_progress_bars()
    method = build_method(args, pairs)
    dataset = {"name": args.dataset, "split": args.split}
    if args.control:
        from groundiff_core.evaluation.controls import shuffled_pairs

        pairs = shuffled_pairs(pairs, seed=args.seed)
        dataset["control"] = {"name": args.control, "seed": args.seed}
    info = {"csv": str(args.csv.resolve()), "images": str(args.images.resolve()) if args.images else None,
            "command": " ".join(["groundiff", *sys.argv[1:]])}
    summary = ev.evaluate(
        method, pairs, out,
        dataset=dataset,
        n_pairs=args.n_pairs, shard=shard, seed=args.seed, n_boot=args.bootstrap,
        batch_images=args.batch_images, progress=not args.no_progress, info=info,
        conventions=args.conventions,
    )
    _report(summary, out)
    if launch is None:
        code = _require_results(summary, "check --images and --csv")
        return _strict(summary) if args.strict else code
    mark_shard_done(out, launch, summary["n_pairs"])
    if launch.rank != 0:
        print(f"rank {launch.rank} of {launch.world_size}: shard done; rank 0 merges into {args.out}")
        return 0
    print(f"rank 0: waiting up to {args.merge_timeout:g} s for the other {launch.world_size - 1} shard(s)", flush=True)
    folders = wait_for_shards(args.out, launch, args.merge_timeout)
    summary = ev.merge(folders, args.out, n_boot=args.bootstrap, seed=args.seed)
    _report(summary, args.out)
    return _require_results(summary, "check --images and --csv")


def _launch(args: argparse.Namespace):
    """The launcher's rank (torchrun and the like set RANK/WORLD_SIZE/LOCAL_RANK), or None; with a
    rank, ``--device auto``/``cuda`` becomes this rank's accelerator, ``cuda:LOCAL_RANK``."""
    launch = launch_rank()
    if launch is None:
        return None
    if args.shard:
        raise ValueError(f"--shard {args.shard} under a launcher (RANK={launch.rank}, WORLD_SIZE="
                         f"{launch.world_size}): the ranks are the shards; drop --shard")
    if args.device in ("auto", "cuda") and args.method == "ldm":
        import torch

        if torch.cuda.is_available():
            args.device = f"cuda:{launch.local_rank}"
    return launch


def _report(summary: dict, out: Path) -> None:
    ca = summary["class_averaged"]
    if summary.get("partial"):
        print("PARTIAL merge: " + "; ".join(summary["partial"]["reasons"]), file=sys.stderr)

    def fmt(m: str) -> str:
        s = ca[m]
        return "n/a" if s["mean"] is None else f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"

    sk = summary["skipped"]
    dropped = summary.get("dropped", {}).get("n_pairs", 0)
    left = ", ".join(f"{n} {what}" for n, what in ((sk["n_pairs"], "skipped"),
                                                    (dropped, "dropped at load time")) if n)
    print(f"{'PARTIAL: ' if summary.get('partial') else ''}{summary['n_pairs']} pairs on {summary['n_images']} images"
          f"{f' ({left})' if left else ''}; class-averaged: "
          f"mIoU {fmt('miou')}, AUC-ROC {fmt('auc')}, |CNR| {fmt('cnr_abs')}")
    changed = summary.get("changed", {}).get("n_pairs", 0)
    if changed:
        print(f"recomputed {changed} pair(s) whose annotations or image changed since they were "
              "evaluated")
    ts = summary["text_sensitivity"]
    if ts["value"] is not None:
        print(f"text sensitivity: {ts['value']:.3f} over {ts['n_pairs']} pairs")
    if dropped:
        print(f"DROPPED {dropped} pair(s) at load time (no usable box): listed in "
              f"{out / 'summary.json'}", file=sys.stderr)
    if sk["n_pairs"]:
        causes = sorted({im["reason"].split(" (")[0].split(":")[0] for im in sk["images"]})
        print(f"SKIPPED {sk['n_pairs']} pair(s) on {sk['n_images']} image(s) ({'; '.join(causes)}): listed "
              f"with their reasons in {out / 'summary.json'}", file=sys.stderr)
    print(f"wrote {out / 'results.jsonl'}, {out / 'summary.json'}, {out / 'summary.csv'}")
