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
n_pairs = 6  # pairs drawn and grounded live (seeded subset); with a shipped run the table stands on its pairs
shipped_run = ""  # shipped runs of the methods (a folder each), read for the phantom model on the phantom test split ("": live); book/results/phantom-captum once all six are shipped
shipped_cross_attention = "book/results/phantom-paper"  # with shipped_run: the main table's shipped run, read on the same pairs
min_shipped_pairs = 200  # refuse shipped runs that share fewer scored pairs than this
recheck_pairs = 1  # pairs of each shipped run grounded again live and compared with it (whole images, seeded)
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
from pathlib import Path
from IPython.display import Markdown, display

import groundiff_core as gd
from groundiff_core.book import pages
from groundiff_core.evaluation.boxes import scored_boxes
from groundiff_core.book import provenance
from groundiff_core.book import figures
from groundiff_core.book import conclusions
from groundiff_core.book import shipped
from groundiff_core.methods.attribution import ObjectiveConfig, make_methods, token_attribution
from groundiff_core.util.profiling import peak_memory
from groundiff_core.evaluation import evaluate, load_results
from groundiff_core.evaluation.compare import MIN_PAIRS, paired_difference
from groundiff_core.io.images import load_image

# %% tags=["hide-input"]
XATTN = "cross-attention (paper preset)"
use_shipped = shipped.uses_shipped(model, dataset_csv, shipped_run)
runs = {XATTN: shipped.load_shipped(shipped_cross_attention)} if use_shipped else {}
runs.update({name: shipped.load_shipped(Path(shipped_run) / name) for name in methods} if use_shipped else {})
out, data, ldm = pages.setup_notebook(
    output_dir, seed=seed, model=model, device=device, dtype=dtype, text_encoder=text_encoder,
    dataset_csv=dataset_csv, images_root=images_root, dataset=dataset, split=split, n_pairs=n_pairs,
    phantom_images=runs[XATTN].phantom_images if use_shipped else phantom_images)
display(provenance.provenance_box(data, ldm, preset="paper (cross-attention); Captum settings below",
                                config=gd.GroundingConfig.paper(), output_dir=out,
                                extra={"shipped": {k: r.provenance() for k, r in runs.items()}} if use_shipped else None))
show = pages.resolve_show_images(show_images, data)

# %% tags=["hide-input"]
objective = ObjectiveConfig(n_draws=objective_draws, seed=seed)
contenders = {XATTN: gd.Grounder(ldm, gd.GroundingConfig.paper(), inversion_cache=pages.inversion_cache(inversion_cache)),
              **make_methods(methods, ldm, objective=objective, seed=seed, ig_steps=ig_steps, n_samples=n_samples,
                             occlusion_window=occlusion_window, occlusion_stride=occlusion_stride)}
if use_shipped:  # refuse runs that are not these methods', this model's or these pairs'; all on the pairs all scored
    runs = shipped.checked_runs(runs, contenders, data.pairs, min_pairs=min_shipped_pairs)
contenders = {k: pages.KeepMaps(m) for k, m in contenders.items()}
figures.show_table(pd.DataFrame({k: {"settings": figures.settings_text(m.describe())} for k, m in contenders.items()}).T,
                   out, "settings")

# %% [markdown]
# ## Localisation and cost on the same pairs

# %% tags=["hide-input"]
summaries, rows_of, rechecks = {}, {}, {}
for name, method in contenders.items():
    folder = out / name.split(" ")[0].replace("-", "_")
    if use_shipped:  # the shipped rows, and a live re-check of a seeded image of each run
        summaries[name], rows_of[name] = runs[name].summarize(seed=seed), runs[name].ok_rows
        rechecks[name] = shipped.recheck(runs[name], method, data.pairs, out / f"recheck_{folder.name}",
                                         n=recheck_pairs, seed=seed)
        continue
    summaries[name] = evaluate(method, data.pairs, folder, dataset=data.description,
                               n_pairs=n_pairs or None, seed=seed, progress=False)
    rows_of[name] = [r for r in load_results(folder) if r["pair_id"] in {p.pair_id for p in data.selected}]
differences = {name: {m: paired_difference(rows_of[name], rows_of[XATTN], m, seed=seed) for m in ("auc", "miou")}
               for name in contenders if name != XATTN}
first = data.selected[0]
image0 = load_image(first.image_path)
memory = {name: peak_memory(m.method, image0, [first.phrase]) for name, m in contenders.items()}  # (bytes, how)
names = {"miou": "mIoU", "auc": "AUC-ROC", "cnr_abs": "|CNR|"}
table = figures.ci_frame({k: s["class_averaged"] for k, s in summaries.items()}, list(names), names)
table.insert(0, "pairs", [s["n_pairs"] for s in summaries.values()])
table["s / pair (evaluation)"] = [f"{s['seconds_per_pair']:.2f}" for s in summaries.values()]
table["peak memory (MB)"] = [f"{peak / 2**20:.0f}" for peak, _ in memory.values()]
figures.show_table(table, out, "captum_table")

# %% tags=["hide-input"]
table = pd.DataFrame({name: {f"{names[m]} minus cross-attention": figures.fmt_diff(d[m]) for m in ("auc", "miou")}
                      | {"pairs": d["auc"]["n_pairs"]} for name, d in differences.items()}).T
figures.show_table(table, out, "captum_differences")
if use_shipped:
    display(Markdown(
        f"Every row stands on the same {summaries[XATTN]['n_pairs']} pairs: the methods' shipped runs "
        f"(`{shipped_run}`, one folder per method, made by `scripts/ship_captum.py` with this page's settings) "
        f"and the main table's shipped cross-attention run (`{shipped_cross_attention}`) on the pairs all of them "
        "scored. Their seconds per pair were measured single-threaded on the machine that made them "
        f"({runs[XATTN].machine}).\n\n" + "\n\n".join(
            f"{name}: " + shipped.recheck_markdown(r, names) for name, r in rechecks.items())))

# %% [markdown]
# Class-averaged metrics with 95% bootstrap confidence intervals (pairs resampled within each
# class; the `pairs` column says how many pairs each method was scored on), seconds per pair during the
# evaluation and the peak memory of one call on the first pair (`peak_memory`: torch's CPU tensor
# allocations above the start, from the profiler, on CPU; peak allocated memory on a GPU). The second
# table gives each attribution method's class-averaged AUC-ROC and mIoU minus cross-attention's on the
# pairs both scored, with a paired bootstrap interval (per-pair differences resampled within each class). The
# cross-attention method grounds every phrase of an image from one inversion; each attribution
# method runs per phrase.

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), constrained_layout=True)
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
grid_rows = []
for p in shown:
    image = load_image(p.image_path)
    boxes, _ = scored_boxes(p, image.shape, ldm.input_size)  # as the runner scored them
    grid_rows.append((f"'{p.phrase}'", figures.screen(image, show), boxes,
                      {name.replace(" (paper preset)", ""): m.get_or_ground(image, p.phrase) for name, m in contenders.items()}))
figures.publish(figures.qualitative_grid(grid_rows) if grid_rows else figures.placeholder("no scorable pair"),
                out, "side_by_side")

# %% [markdown]
# ```{glue:figure} side_by_side
# :name: fig-05-side-by-side
#
# Each column one pair (image, phrase and its ground-truth boxes in the first row),
# each further row the heatmap of one method. Look at where each method puts its mass: gradient
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
fig, axes = plt.subplots(1, max(1, min(token_pairs, len(data.selected))), figsize=(min(8.0, max(6.0, 4.0 * max(1, token_pairs))), 2.8),
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
top = max((k for k in summaries if k != XATTN), key=lambda k: summaries[k]["class_averaged"]["auc"]["mean"] or -1)
metrics_file = pages.save_json({"dataset": data.description, "objective": objective.describe(), "highest_mean_captum": top,
                                   "class_averaged": {k: s["class_averaged"] for k, s in summaries.items()},
                                   "n_pairs": {k: s["n_pairs"] for k, s in summaries.items()},
                                   "difference_to_cross_attention": differences, "shipped": use_shipped,
                                   "rechecks": rechecks,
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
