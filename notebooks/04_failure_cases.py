# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Where it fails
#
# Averages hide how a method fails. This notebook runs the paper's preset on a set of pairs and
# looks at the errors: the worst pair of each class, error against the size of the ground-truth
# box, left against right, where the image-blind phrase prior does better, phrases with several
# boxes, and how the heatmap reacts when the phrase is rephrased, its side swapped, or negated
# ("no pleural effusion").
#
# With the default parameters this runs on the phantom test bed ([introduction](../intro.md)).
# The phantom's text encoder knows only the words of its report templates: a phrase its tokenizer
# cannot represent (such as one starting with "no") is not grounded, and the prompt-sensitivity
# table says so.

# %% tags=["parameters"]
model = "phantom"
dataset_csv = None  # None: the phantom test split, generated into output_dir
images_root = None
dataset = "mscxr"
split = None
phantom_images = 200
n_pairs = 24  # pairs evaluated (seeded subset; 0: all)
seed = 0
device = "cpu"  # "cuda" for the paper's model
dtype = None  # e.g. "float16" on a GPU
text_encoder = None  # paper's model: the SD 2.1 base folder, if not inside the model folder
output_dir = "book/notebooks/04_failure_cases_files"
inversion_cache = "book/notebooks/_inversions"  # inversions shared by the pages of a build (content-keyed; None: off)
worst_per_class = 1  # worst pairs shown per class
prompt_pairs = 2  # pairs whose phrase is varied in the prompt-sensitivity study
batch_images = 4  # images per UNet call (the Grounder's batch_size; on CPU the maps are the same to the bit); more on a GPU
show_images = None  # draw the dataset's images; None: only for the phantom (keeps patient images out of the page)
n_boot = 1000  # bootstrap resamples for the confidence intervals
shipped_run = "book/results/phantom-paper"  # shipped paper-preset run read for the phantom model on the phantom ("": live)
recheck_pairs = 2  # pairs of the shipped run grounded again live and compared with it

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import groundiff_core as gd
from groundiff_core.book import pages
from groundiff_core.util.phrases import side_of_phrase
from groundiff_core.book import provenance
from groundiff_core.book import figures
from groundiff_core.book import shipped
from groundiff_core.book import conclusions
from groundiff_core.evaluation import metrics
from groundiff_core.io.datasets import group_by_image
from groundiff_core.evaluation import evaluate, load_results
from groundiff_core.evaluation.compare import by_side, paired_difference, verdict
from groundiff_core.io.images import load_image
from groundiff_core.models.text import unknown_words, unrepresentable

# %% tags=["hide-input"]
use_shipped = shipped.uses_shipped(model, dataset_csv, shipped_run)
run = shipped.load_shipped(shipped_run) if use_shipped else None  # the main table's shipped run, if used
out, data, ldm = pages.setup_notebook(  # shipped run: every pair of the phantom split it read
    output_dir, seed=seed, model=model, device=device, dtype=dtype, text_encoder=text_encoder,
    dataset_csv=dataset_csv, images_root=images_root, dataset=dataset, split=split,
    n_pairs=0 if use_shipped else n_pairs, phantom_images=run.phantom_images if use_shipped else phantom_images)
if use_shipped:  # refuse a run that is not this model's, this preset's or these pairs'
    run.check_model(ldm)
    run.check_config(gd.GroundingConfig.paper(), "paper")
    run.check_data(data.pairs)
display(provenance.provenance_box(data, ldm, preset="paper", config=gd.GroundingConfig.paper(), output_dir=out,
                                  extra={"shipped": run.provenance()} if use_shipped else None))
show = pages.resolve_show_images(show_images, data)

# %% tags=["hide-input"]
grounder = pages.KeepMaps(gd.Grounder(ldm, gd.GroundingConfig.paper(), batch_size=batch_images,
                                      inversion_cache=pages.inversion_cache(inversion_cache)))
if use_shipped:  # the shipped rows, a few of them grounded again now; the pairs drawn below are grounded live
    check = shipped.recheck(run, grounder, data.pairs, out / "recheck", n=recheck_pairs, seed=seed,
                            batch_images=batch_images)
    display(Markdown(f"This page reads the shipped run `{shipped_run}` (the main table's). "
                     + shipped.recheck_markdown(check)))
    summary, rows = run.summarize(n_boot=n_boot, seed=seed), run.ok_rows
    scored = [p for p in data.pairs if p.pair_id in {r["pair_id"] for r in rows}]
else:
    summary = evaluate(grounder, data.pairs, out / "cross_attention", dataset=data.description,
                       n_pairs=n_pairs or None, seed=seed, progress=False, batch_images=batch_images)
    rows = [r for r in load_results(out / "cross_attention") if r.get("status") == "ok"]
    scored = data.selected
pairs = {p.pair_id: p for p in data.pairs}
res = pd.DataFrame(rows)
res["n_boxes"] = res.boxes.map(len)
res["box_fraction"] = [sum(b[2] * b[3] for b in bx) / (hw[0] * hw[1]) for bx, hw in zip(res.boxes, res.image_hw)]
res["side"] = res.phrase.map(side_of_phrase)
print(f"{len(res)} pairs on {res.image_path.nunique()} images evaluated; class-averaged AUC-ROC "
      f"{figures.fmt_ci(summary['class_averaged']['auc'])}, mIoU {figures.fmt_ci(summary['class_averaged']['miou'])}")



# %% [markdown]
# ## The worst pair of each class
#
# Ranked by AUC-ROC (the ranking metric that does not depend on a threshold), ties by mIoU.

# %% tags=["hide-input"]
worst = (res.sort_values(["auc", "miou"]).groupby("category", sort=True).head(worst_per_class)
         .sort_values("category"))
fig, axes = figures.grid(len(worst), ncols=4, size=2.7)
for ax, (_, r) in zip(axes, worst.iterrows()):
    image = load_image(pairs[r.pair_id].image_path)
    hm = grounder.get_or_ground(image, pairs[r.pair_id].phrase)  # kept during the evaluation, else grounded now
    figures.overlay(ax, figures.screen(image, show), hm, r.boxes, title=f"{r.category}: '{r.phrase}'\nAUC {r.auc:.2f}, mIoU {r.miou:.2f}",
                    fontsize=7)
    figures.side_labels(ax)
figures.publish(fig, out, "worst_per_class")
worst[["category", "phrase", "auc", "miou", "cnr_abs", "n_boxes", "box_fraction"]].to_csv(out / "worst_pairs.csv", index=False)

# %% [markdown]
# ```{glue:figure} worst_per_class
# :name: fig-04-worst-per-class
#
# The worst-scoring pair of each class: heatmap over the image, ground-truth box(es)
# in green, R/L the patient's sides. Look for the kind of failure: attention on another finding of
# the same image (the text was not used), on the wrong side (laterality), on anatomy (a bright
# structure such as the heart or the diaphragm), or a diffuse map that Otsu could not cut.
# ```

# %% [markdown]
# ## Error against box size

# %% tags=["hide-input"]
res["size_bin"] = pd.qcut(res.box_fraction, q=min(4, max(1, len(res) // 4)), duplicates="drop")
by_size = res.groupby("size_bin", observed=True)[["auc", "miou", "cnr_abs"]].agg(["mean", "count"])
figures.show_table(by_size, out, "by_box_size")
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), constrained_layout=True)
for ax, m, label in zip(axes, ["auc", "miou"], ["AUC-ROC", "mIoU"]):
    for c, df in res.groupby("category"):
        ax.scatter(df.box_fraction, df[m], s=14, label=c, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ground-truth area / image area")
    ax.set_ylabel(label)
axes[1].legend(fontsize=6, ncol=2)
figures.publish(fig, out, "by_box_size")

# %% [markdown]
# ```{glue:figure} by_box_size
# :name: fig-04-by-box-size
#
# Per-pair AUC-ROC and mIoU against the share of the image the ground truth covers
# (log scale), coloured by class. Look at the small boxes: mIoU punishes a map that is right in
# place but larger than a small box far more than AUC-ROC does.
# ```

# %% [markdown]
# ## Left and right
#
# For phrases that name one side, the pointing game (is the map's maximum inside the boxes?) and
# AUC-ROC, separately for "left ..." and "right ..." phrases. A model that localises what it sees
# scores both sides alike; one that learned a place for each phrase, or mixes up the radiological
# convention (the patient's right is the image's left), does not.

# %% tags=["hide-input"]
lat = res[res.side.isin(["left", "right"])].copy()
sides = {m: by_side(res, m, n_boot=n_boot, seed=seed) for m in ("pointing", "auc", "miou")}
side_table = pd.DataFrame({(m, side): {"pairs": st[side]["n_pairs"], "mean [95% CI]": figures.fmt_ci(st[side])}
                           for m, st in sides.items() for side in ("left", "right")}).T
figures.show_table(side_table, out, "laterality")
if len(lat):
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8), constrained_layout=True)
    for ax, m, label in zip(axes, ["pointing", "auc"], ["pointing game", "AUC-ROC"]):
        for j, side in enumerate(("right", "left")):
            st = sides[m][side]
            if st["mean"] is not None:
                ax.bar(j, st["mean"], yerr=[[st["mean"] - st["ci_low"]], [st["ci_high"] - st["mean"]]], capsize=3)
        ax.set_xticks([0, 1], [f"'right ...' ({sides[m]['right']['n_pairs']})", f"'left ...' ({sides[m]['left']['n_pairs']})"])
        ax.set_ylabel(label)
    figures.publish(fig, out, "laterality")
else:
    figures.publish(figures.placeholder("no evaluated phrase names one side"), out, "laterality")

# %% [markdown]
# ```{glue:figure} laterality
# :name: fig-04-laterality
#
# Pointing game and AUC-ROC (mean, 95% bootstrap interval; pairs in brackets) of the phrases that
# name the patient's right and of those that name the left. Bars of different height mean the
# method localises one side better than the other.
# ```

# %% [markdown]
# ## Where the phrase prior wins
#
# The phrase prior never looks at the image: each phrase's map is where such phrases usually lie
# (on the phantom fitted on training phantoms, elsewhere cross-fitted by image). On the same pairs:
# per class, the cross-attention method minus the prior, and the pairs where the prior is furthest
# ahead.

# %% tags=["hide-input"]
prior = pages.KeepMaps(pages.phrase_prior(data, seed=seed))
evaluate(prior, scored, out / "phrase_prior", dataset=data.description, seed=seed, progress=False)
prior_rows = pd.DataFrame([r for r in load_results(out / "phrase_prior") if r.get("status") == "ok"])
prior_rows = prior_rows[prior_rows.pair_id.isin(res.pair_id)]
per_class_prior = {}
for c in sorted(res.category.unique()):
    a, b = res[res.category == c], prior_rows[prior_rows.category == c]
    for m, label in (("miou", "mIoU"), ("auc", "AUC-ROC")):
        d = paired_difference(a, b, m, n_boot=n_boot, seed=seed)
        per_class_prior[(c, label)] = {"pairs": d["n_pairs"], "cross-attention minus prior": figures.fmt_diff(d),
                                       "verdict": verdict(d)}
per_class_prior = pd.DataFrame(per_class_prior).T.rename_axis(["class", "metric"])
figures.show_table(per_class_prior, out, "against_phrase_prior")
gap = res[["pair_id", "category", "phrase", "boxes", "auc"]].merge(
    prior_rows[["pair_id", "auc"]], on="pair_id", suffixes=("", "_prior"))
gap["prior_ahead"] = gap.auc_prior - gap.auc
ahead = gap.sort_values("prior_ahead", ascending=False).head(4)
fig, axes = figures.grid(2 * len(ahead), ncols=4, size=2.7)
for k, (_, r) in enumerate(ahead.iterrows()):
    image = load_image(pairs[r.pair_id].image_path)
    hm = grounder.get_or_ground(image, pairs[r.pair_id].phrase)
    figures.overlay(axes[2 * k], figures.screen(image, show), hm, r.boxes, title=f"cross-attention, AUC {r.auc:.2f}\n'{r.phrase}'",
                    fontsize=7)
    figures.overlay(axes[2 * k + 1], figures.screen(image, show), prior.get(image, r.phrase), r.boxes,
                    title=f"phrase prior, AUC {r.auc_prior:.2f}", fontsize=7)
    for ax in axes[2 * k:2 * k + 2]:
        figures.side_labels(ax)
figures.publish(fig, out, "prior_ahead")

# %% [markdown]
# ```{glue:figure} prior_ahead
# :name: fig-04-prior-ahead
#
# The pairs on which the image-blind phrase prior beats the cross-attention map by the most
# AUC-ROC: each pair's cross-attention map, then the prior's map, with the phrase's boxes. Where
# the prior wins, the finding lies where such findings usually lie and the cross-attention map is
# elsewhere: on another finding, on anatomy, or spread out.
# ```

# %% [markdown]
# ## Phrases with several boxes
#
# MS-CXR gives several boxes when a phrase names a finding in several places (e.g. bilateral
# effusions); the ground truth is their union.

# %% tags=["hide-input"]
res["boxes_group"] = np.where(res.n_boxes > 1, "several boxes", "one box")
multi = res.groupby("boxes_group")[["auc", "miou", "cnr_abs", "pointing"]].agg(["mean", "count"])
figures.show_table(multi, out, "multi_box")
fig, axes = plt.subplots(1, 2, figsize=(8, 3), constrained_layout=True)
for ax, m, label in zip(axes, ["auc", "miou"], ["AUC-ROC", "mIoU"]):
    groups = [g[m].dropna().values for _, g in res.groupby("boxes_group")]
    ax.boxplot(groups, tick_labels=[k for k, _ in res.groupby("boxes_group")])
    ax.set_ylabel(label)
figures.publish(fig, out, "multi_box")

# %% [markdown]
# ```{glue:figure} multi_box
# :name: fig-04-multi-box
#
# AUC-ROC and mIoU of phrases with one ground-truth box against phrases with several.
# Look at mIoU: a single Otsu-thresholded blob tends to cover one of several boxes, which caps the
# overlap with their union.
# ```

# %% [markdown]
# ## Prompt sensitivity
#
# The same image, the same inversion, different text: the original phrase, the finding's name
# alone, the phrase with left and right swapped, the phrase negated, and an unrelated finding. Each
# map is scored against the *original* phrase's boxes.

# %% tags=["hide-input"]
categories = sorted(res.category.unique())
candidates = res.sort_values("auc", ascending=False)
lateral = candidates[candidates.side.isin(["left", "right"])]
chosen = pd.concat([lateral, candidates]).drop_duplicates("pair_id").head(prompt_pairs)
prompt_rows, panels = [], []
for _, r in chosen.iterrows():
    p = pairs[r.pair_id]
    # class names compared without case (MS-CXR writes "Pleural Effusion"), sides swapped whatever
    # their case or punctuation, boxes as the runner scored them (rescaled to the image as read)
    variants = {"original": p.phrase, "finding name only": p.category.lower(),
                "sides swapped": pages.swap_sides(p.phrase), "negated": f"no {p.phrase}",
                "unrelated finding": pages.unrelated_finding(p.category)}
    variants = {k: v for k, v in variants.items() if k == "original" or v.lower() != p.phrase.lower()}
    image = load_image(p.image_path)
    skipped = {k for k, v in variants.items() if unrepresentable(ldm.tokenizer, v)}
    maps = grounder.method.ground(image, list(dict.fromkeys(v for k, v in variants.items() if k not in skipped)))
    for kind, text in variants.items():
        if kind in skipped:
            prompt_rows.append({"pair": p.phrase, "variant": kind, "text": text,
                                "unknown words": "not representable: not grounded",
                                "AUC-ROC on original boxes": float("nan"), "mIoU on original boxes": float("nan")})
            panels.append((image, None, r.boxes, f"{kind}: not representable\n'{text}'"))
            continue
        hm = maps[text]
        prompt_rows.append({"pair": p.phrase, "variant": kind, "text": text,
                            "unknown words": ", ".join(unknown_words(ldm.tokenizer, text)) or "-",
                            "AUC-ROC on original boxes": metrics.auc_roc(hm, r.boxes),
                            "mIoU on original boxes": metrics.miou(hm, r.boxes)})
        panels.append((image, hm, r.boxes, f"{kind}:\n'{text}'"))
prompts = pd.DataFrame(prompt_rows)
figures.show_table(prompts.set_index(["pair", "variant"]), out, "prompt_sensitivity")

# %% tags=["hide-input"]
ncols = max(1, len(panels) // max(1, len(chosen)))
fig, axes = figures.grid(len(panels), ncols=ncols, size=2.3)
for ax, (image, hm, boxes, title) in zip(axes, panels):
    figures.overlay(ax, figures.screen(image, show), hm, boxes, title=title, fontsize=7)
    figures.side_labels(ax)
figures.publish(fig, out, "prompt_sensitivity")

# %% [markdown]
# ```{glue:figure} prompt_sensitivity
# :name: fig-04-prompt-sensitivity
#
# Heatmaps of the phrase variants (columns) for a few pairs (rows), each with the
# *original* phrase's boxes. Look at the "sides swapped" column: if the model reads the side, the
# map moves to the mirror position; and at "negated": a model that ignores negation lights up the
# finding anyway. On the phantom, the tokenizer cannot spell "no" (its closed vocabulary has no
# token for a word-final "o"), so the negated phrase is not grounded and its panel shows the boxes
# only: grounding it would have silently read "n" and then an end-of-text token.
# ```

# %% tags=["hide-input"]
metrics_file = pages.save_json({"dataset": data.description, "class_averaged": summary["class_averaged"],
                                   "laterality": sides,
                                   "against_phrase_prior": per_class_prior.reset_index().to_dict(orient="records"),
                                   "multi_box": multi.reset_index().to_dict(orient="records") if len(multi) else [],
                                   "prompt_sensitivity": prompt_rows}, out, "failure_cases")

# %% [markdown]
# ## What this page shows
#
# Computed from this page's metrics file by one rule (a paired bootstrap interval that excludes 0, on at
# least 30 pairs; fewer pairs get no verdict), not written by hand.

# %% tags=["remove-input"]
display(Markdown(conclusions.failure_page(metrics_file)))
