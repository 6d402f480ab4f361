# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Captum attribution through the same model
#
# Does a generic attribution method, applied to the same frozen LDM, localise findings as well as
# the cross-attention maps do, and at what cost? Captum {cite:p}`kokhlikyan2020captum` attributes a
# scalar output of a network to its input. The scalar here is the **text-conditioned denoising
# gain**: how much better the model predicts the noise added to the image's latent when it is told
# the phrase than when it is given the empty prompt, averaged over a few fixed (timestep, noise)
# draws around the middle of the schedule (`groundiff_core.methods.attribution`). The pixels that raise
# this gain are the pixels the phrase explains.
#
# The methods: Saliency {cite:p}`simonyan2014saliency`, Integrated Gradients
# {cite:p}`sundararajan2017axiomatic` (from a blurred copy of the image), GradientShap
# {cite:p}`lundberg2017shap`, Occlusion {cite:p}`zeiler2014visualizing`, Grad-CAM
# {cite:p}`selvaraju2017gradcam` on the UNet's deepest convolution, and SmoothGrad
# {cite:p}`smilkov2017smoothgrad` (NoiseTunnel-smoothed saliency). Attributions are taken with
# respect to the input image, through the autoencoder, so that they live on the same grid as the
# cross-attention heatmaps; all maps are min-max normalised and put back on the original grid the
# same way. With the default parameters this runs on the phantom test bed
# ([introduction](../intro.md)).

# %% tags=["parameters"]
model = "phantom"
dataset_csv = None  # None: the phantom test split, generated into output_dir
images_root = None
dataset = "mscxr"
split = None
phantom_images = 200
n_pairs = 6  # pairs (seeded subset; the first of them are the main table's too)
seed = 0
device = "cpu"  # "cuda" for the paper's model
dtype = None  # e.g. "float16" on a GPU
text_encoder = None  # paper's model: the SD 2.1 base folder, if not inside the model folder
output_dir = "book/notebooks/05_captum_files"
inversion_cache = "book/notebooks/_inversions"  # inversions shared by the pages of a build (content-keyed; None: off)
methods = ["saliency", "integrated_gradients", "gradient_shap", "occlusion", "grad_cam", "smoothgrad"]
objective_draws = 4  # (timestep, noise) draws of the denoising-gain objective
ig_steps = 16  # Integrated Gradients: integration steps
n_samples = 8  # GradientShap and SmoothGrad: samples
occlusion_window = 0.125  # Occlusion: window side as a share of the input size
occlusion_stride = 0.125  # Occlusion: stride as a share of the input size; the window size, so 64 windows, not 225 at 1/16
shown_pairs = 3  # pairs shown side by side
token_pairs = 2  # pairs whose phrase gets a per-word attribution
show_images = None  # draw the dataset's images; None: only for the phantom (keeps patient images out of the page)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import groundiff_core as gd
from groundiff_core.book import pages
from groundiff_core.evaluation.boxes import scored_boxes
from groundiff_core.book import provenance
from groundiff_core.book import figures
from groundiff_core.book import conclusions
from groundiff_core.methods.attribution import ObjectiveConfig, make_method, token_attribution
from groundiff_core.util.profiling import peak_memory
from groundiff_core.evaluation import evaluate
from groundiff_core.evaluation.compare import MIN_PAIRS
from groundiff_core.io.images import load_image

# %% tags=["hide-input"]
out, data, ldm = pages.setup_notebook(
    output_dir, seed=seed, model=model, device=device, dtype=dtype, text_encoder=text_encoder,
    dataset_csv=dataset_csv, images_root=images_root, dataset=dataset, split=split, n_pairs=n_pairs,
    phantom_images=phantom_images)
display(provenance.provenance_box(data, ldm, preset="paper (cross-attention); Captum settings below",
                                config=gd.GroundingConfig.paper(), output_dir=out))
show = pages.resolve_show_images(show_images, data)

# %% tags=["hide-input"]
objective = ObjectiveConfig(n_draws=objective_draws, seed=seed)
settings = {"integrated_gradients": {"n_steps": ig_steps}, "gradient_shap": {"n_samples": n_samples},
            "smoothgrad": {"n_samples": n_samples},
            "occlusion": {"window_frac": occlusion_window, "stride_frac": occlusion_stride}}
contenders = {"cross-attention (paper preset)": gd.Grounder(ldm, gd.GroundingConfig.paper(),
                                                          inversion_cache=pages.inversion_cache(inversion_cache))}
for name in methods:
    contenders[name] = make_method(name, ldm, objective=objective, seed=seed, **settings.get(name, {}))
contenders = {k: pages.KeepMaps(m) for k, m in contenders.items()}
figures.show_table(pd.DataFrame({k: {"settings": {kk: v for kk, v in m.describe().items() if kk not in ("class", "model")}}
                                 for k, m in contenders.items()}).T, out, "settings")

# %% [markdown]
# ## Localisation and cost on the same pairs

# %% tags=["hide-input"]
summaries = {}
for name, method in contenders.items():
    folder = out / name.split(" ")[0].replace("-", "_")
    summaries[name] = evaluate(method, data.pairs, folder, dataset=data.description,
                               n_pairs=n_pairs or None, seed=seed, progress=False)
first = data.selected[0]
image0 = load_image(first.image_path)
memory = {name: peak_memory(m.method, image0, [first.phrase]) for name, m in contenders.items()}  # (bytes, how)
names = {"miou": "mIoU", "auc": "AUC-ROC", "cnr_abs": "|CNR|"}
table = figures.ci_frame({k: s["class_averaged"] for k, s in summaries.items()}, list(names), names)
table.insert(0, "pairs", [s["n_pairs"] for s in summaries.values()])
table["s / pair (evaluation)"] = [f"{s['seconds_per_pair']:.2f}" for s in summaries.values()]
table["peak memory (MB)"] = [f"{peak / 2**20:.0f}" for peak, _ in memory.values()]
figures.show_table(table, out, "captum_table")

# %% [markdown]
# Class-averaged metrics with 95% bootstrap confidence intervals (pairs resampled within each
# class; the `pairs` column says how many pairs each method was scored on), seconds per pair during the
# evaluation and the peak memory of one call on the first pair (`peak_memory`: torch's CPU tensor
# allocations above the start, from the profiler, on CPU; peak allocated memory on a GPU). The
# cross-attention method grounds every phrase of an image from one inversion; each attribution
# method runs per phrase.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), constrained_layout=True)
order = list(summaries)
for ax, m in zip(axes, ["auc", "miou"]):
    st = [summaries[k]["class_averaged"][m] for k in order]
    mean = np.array([s["mean"] if s.get("mean") is not None else np.nan for s in st])
    err = np.nan_to_num(np.array([[s["mean"] - s["ci_low"], s["ci_high"] - s["mean"]]
                                  if s.get("mean") is not None else [0, 0] for s in st]).T)
    secs = [summaries[k]["seconds_per_pair"] for k in order]
    ax.errorbar(secs, mean, yerr=err, fmt="none", ecolor="0.6", capsize=2)
    for k, x, y in zip(order, secs, mean):
        ax.scatter([x], [y], s=40, color="C3" if k.startswith("cross") else "C0")
        ax.annotate(k.replace(" (paper preset)", ""), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per pair (log)")
    ax.set_ylabel(f"class-averaged {names[m]}")
figures.publish(fig, out, "quality_vs_cost")

# %% [markdown]
# ```{glue:figure} quality_vs_cost
# :name: fig-05-quality-vs-cost
#
# Class-averaged AUC-ROC and mIoU (with 95% CIs) against the time each method spends
# per pair, cross-attention in red. Look at the upper left: good localisation at low cost.
# ```

# %% [markdown]
# ## The same pairs, side by side

# %% tags=["hide-input"]
shown = pages.scorable_pairs(data.selected, crop_size=ldm.input_size)[:shown_pairs]
cols = list(contenders)
fig, axes = plt.subplots(len(shown), len(cols) + 1, figsize=(2.1 * (len(cols) + 1), 2.3 * len(shown)),
                         squeeze=False, constrained_layout=True)
for i, p in enumerate(shown):
    image = load_image(p.image_path)
    boxes, _ = scored_boxes(p, image.shape, ldm.input_size)  # as the runner scored them
    figures.overlay(axes[i, 0], figures.screen(image, show), None, boxes, title=f"'{p.phrase}'", fontsize=7)
    for j, name in enumerate(cols, start=1):
        figures.overlay(axes[i, j], figures.screen(image, show), contenders[name].get(image, p.phrase), boxes,
                        title=name.replace(" (paper preset)", "") if i == 0 else None, fontsize=7)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
figures.publish(fig, out, "side_by_side")

# %% [markdown]
# ```{glue:figure} side_by_side
# :name: fig-05-side-by-side
#
# Each row one pair (image, phrase and its ground-truth boxes in the first column),
# each further column the heatmap of one method. Look at where each method puts its mass: gradient
# methods tend to follow edges and texture of the whole image, occlusion and Grad-CAM give blobs
# at the resolution of their window or layer, cross-attention gives a thresholded blob.
# ```

# %% [markdown]
# ## Which words drive the objective
#
# Layer Integrated Gradients on the text encoder's token embeddings, from a prompt in which each
# word of the phrase is replaced by the padding token: a positive score means the word raises the
# denoising gain on this image.

# %% tags=["hide-input"]
token_rows = []
fig, axes = plt.subplots(1, max(1, min(token_pairs, len(data.selected))), figsize=(max(6.0, 4.2 * max(1, token_pairs)), 2.8),
                         squeeze=False, constrained_layout=True)
for ax, p in zip(axes[0], data.selected[:token_pairs]):
    scores = token_attribution(ldm, load_image(p.image_path), p.phrase, objective=objective, n_steps=ig_steps)
    words, vals = zip(*scores) if scores else ((), ())
    ax.bar(range(len(vals)), vals, color=["C2" if v > 0 else "C3" for v in vals])
    ax.set_xticks(range(len(words)), words, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(f"'{p.phrase}'", fontsize=8)
    token_rows += [{"phrase": p.phrase, "token": w, "score": v} for w, v in scores]
pd.DataFrame(token_rows).to_csv(out / "token_attribution.csv", index=False)
figures.publish(fig, out, "token_attribution")

# %% [markdown]
# ```{glue:figure} token_attribution
# :name: fig-05-token-attribution
#
# Per-word attribution of the denoising gain for a few phrases (green: the word raises
# the gain). Look at whether the finding's name and the side carry the score, or filler words.
# ```

# %% tags=["hide-input"]
captum_only = {k: s for k, s in summaries.items() if not k.startswith("cross")}
top = max(captum_only, key=lambda k: captum_only[k]["class_averaged"]["auc"]["mean"] or -1)
ca = summaries["cross-attention (paper preset)"]["class_averaged"]
top_auc = summaries[top]["class_averaged"]["auc"]
apart = (top_auc.get("ci_low") is not None and ca["auc"].get("ci_low") is not None
         and (top_auc["ci_low"] > ca["auc"]["ci_high"] or ca["auc"]["ci_low"] > top_auc["ci_high"]))
display(Markdown(
    f"Every method ran on the same {summaries[top]['n_pairs']} pairs. The attribution method with the highest "
    f"mean class-averaged AUC-ROC on them is **{top}** ({figures.fmt_ci(top_auc)}, "
    f"{summaries[top]['seconds_per_pair']:.2f} s per pair); cross-attention: {figures.fmt_ci(ca['auc'])} "
    f"({summaries['cross-attention (paper preset)']['seconds_per_pair']:.2f} s per pair). "
    + (f"Too few pairs for a verdict (fewer than {MIN_PAIRS})." if summaries[top]["n_pairs"] < MIN_PAIRS else
       "Their 95% intervals do not overlap." if apart else
       "Their 95% intervals overlap, so these pairs do not rank the two.")
    + " The ranking among the attribution methods is a ranking of means only: no test here separates them."))
metrics_file = pages.save_json({"dataset": data.description, "objective": objective.describe(), "highest_mean_captum": top,
                                   "class_averaged": {k: s["class_averaged"] for k, s in summaries.items()},
                                   "seconds_per_pair": {k: s["seconds_per_pair"] for k, s in summaries.items()},
                                   "peak_memory": {k: {"bytes": b, "measured_by": how} for k, (b, how) in memory.items()},
                                   "tokens": token_rows}, out, "captum")

# %% [markdown]
# ## What this page shows
#
# Computed from this page's metrics file by one rule (a paired bootstrap interval that excludes 0, on at
# least 30 pairs; fewer pairs get no verdict), not written by hand.

# %% tags=["remove-input"]
display(Markdown(conclusions.captum_page(metrics_file)))
