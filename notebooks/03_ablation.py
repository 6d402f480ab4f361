# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Which layers and steps: the L/T ablation
#
# The paper reads cross-attention only from the *middle* of the model and the *middle* of the
# trajectory. Its ablation varies **L**, how many middle cross-attention layers are averaged, and
# **T**, the width of the window of inversion steps around the middle of the trajectory (as a
# share of the steps); its summary reports L = 6 and T = 20 % as the best setting, and its released
# code reads layers 3, 4, 6, 7 and steps 120..179 {cite:p}`vilouras2024zeroshot`. It also reports
# that Otsu post-processing improves localisation.
#
# Here every cell of the L x T grid is computed from **one recorded inversion per image**
# (`Grounder.record` keeps the token-averaged attention of every layer and step;
# `Recording.aggregate(middle_layers=L, window_percent=T)` computes any cell without running the
# model again), so the whole grid costs one recorded inversion per image, whatever the number of cells.
#
# "The L middle layers" of the model's cross-attention layers (execution order) is the contiguous
# block centred on the middle layer; "T %" is a window of T % of the nominal inference steps
# centred on the middle step (T = 20 of 300 gives steps 120..179). With the default parameters this
# runs on the phantom test bed ([introduction](../intro.md)).

# %% tags=["parameters"]
model = "phantom"
dataset_csv = None  # None: the phantom test split, generated into output_dir
images_root = None
dataset = "mscxr"
split = None
phantom_images = 200
n_pairs = 12  # pairs in the ablation (seeded subset; 0: all)
seed = 0
device = "cpu"  # "cuda" for the paper's model
dtype = None  # e.g. "float16" on a GPU
text_encoder = None  # paper's model: the SD 2.1 base folder, if not inside the model folder
output_dir = "book/notebooks/03_ablation_files"
inversion_cache = "book/notebooks/_inversions"  # inversions shared by the pages of a build (content-keyed; None: off)
num_inference_steps = 300  # the paper's 300 (334 trailing steps); fewer makes the recording cheaper (windows scale)
L_values = [1, 2, 4, 6, 8, 11]  # numbers of middle cross-attention layers
T_values = [5, 10, 20, 40, 60, 100]  # window widths, % of the steps, centred on the middle
paper_L, paper_T = 6, 20  # the paper's summary setting (marked in the figures)
n_boot = 1000  # bootstrap resamples of the confidence intervals and of the paired comparisons
show_images = None  # draw the dataset's images; None: only for the phantom (keeps patient images out of the page)
paper_run = "book/results/phantom-paper"  # shipped paper-preset run on the phantom test split (the reference)
fast_run = "book/results/phantom-fast"  # shipped fast-preset run on the same split ("": leave the comparison out)
class_tokens_run = "book/results/phantom-class-tokens"  # shipped class-name token run on the same split ("" or absent: live)
ablation_run = "book/results/phantom-ablation"  # shipped grid on whole images of the split, read at the 300 steps it was made with ("" or absent: live)
min_paired_pairs = 200  # refuse the preset comparison on fewer common pairs (the page promises at least 200)
fast_recheck_pairs = 4  # pairs of the shipped fast run grounded again live and compared with it
batch_images = 4  # images per UNet call (the Grounder's batch_size; on CPU the maps are the same to the bit); more on a GPU

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from groundiff_core.evaluation.compare import MIN_PAIRS, class_averaged_ci, paired_difference, verdict
import numpy as np
from pathlib import Path
import pandas as pd
from IPython.display import Markdown, display

import groundiff_core as gd
from groundiff_core.book import pages
from groundiff_core.book import provenance
from groundiff_core.book import figures
from groundiff_core.book import conclusions
from groundiff_core.book import shipped
from groundiff_core.book import shipped_ablation
from groundiff_core.engine.config import window_from_percent
from groundiff_core.io.datasets import group_by_image
from groundiff_core.evaluation import evaluate, load_results
from groundiff_core.evaluation.ablation import ablation, ablation_settings, grid_cells
from groundiff_core.engine.recording import word_positions
from groundiff_core.methods.class_tokens import ClassNameTokens

# %% tags=["hide-input"]
out, data, ldm = pages.setup_notebook(
    output_dir, seed=seed, model=model, device=device, dtype=dtype, text_encoder=text_encoder,
    dataset_csv=dataset_csv, images_root=images_root, dataset=dataset, split=split, n_pairs=n_pairs,
    phantom_images=phantom_images)
config = gd.GroundingConfig.paper().with_steps(num_inference_steps)
display(provenance.provenance_box(data, ldm, preset=f"paper ({num_inference_steps} inference steps)",
                                config=config, output_dir=out))
show = pages.resolve_show_images(show_images, data)

# %% tags=["hide-input"]
grounder = gd.Grounder(ldm, config, batch_size=batch_images, inversion_cache=pages.inversion_cache(inversion_cache))
n_layers = len(grounder.layers)
L_values = [L for L in L_values if 1 <= L <= n_layers]
windows = {T: window_from_percent(T, num_inference_steps) for T in T_values}
lo, hi = min(w[0] for w in windows.values()), max(w[1] for w in windows.values())
print(f"{len(data.selected)} pairs on {len(group_by_image(data.selected))} images; model {ldm.name} "
      f"with {n_layers} cross-attention layers; recording steps [{lo}, {hi}) of "
      f"{len(grounder.schedule())}")
figures.show_table(pd.DataFrame({f"T = {T} %": {"steps": f"{w[0]}..{w[1] - 1}"} for T, w in windows.items()}),
                   out, "windows")

# %% [markdown]
# ## One recording per image, every cell from it

# %% tags=["hide-input"]
settings, (lo, hi) = ablation_settings(config, L_values, T_values, n_layers)
post = {name: kw for name, kw in settings.items() if isinstance(name, str)}
use_shipped_grid = (shipped.uses_shipped(model, dataset_csv, ablation_run) and Path(ablation_run).is_dir()
                    and num_inference_steps == 300)
if use_shipped_grid:  # the shipped grid, refused unless it is what this cell computes, re-checked live
    abl = shipped_ablation.load(ablation_run)
    abl_pairs = abl.pairs(shipped.load_shipped(paper_run).phantom_pairs(out / "phantom_shipped"))
    abl.check(grounder, abl_pairs, settings, (lo, hi))
    grid_check = abl.recheck(grounder, abl_pairs, settings, (lo, hi), n=fast_recheck_pairs, seed=seed)
    rows, example = abl.rows, grid_check["example"]
    display(Markdown(f"The grid below reads the shipped run `{ablation_run}`: {len(abl_pairs)} pairs on "
                     f"{len(group_by_image(abl_pairs))} whole images of the phantom test split. "
                     + shipped.recheck_markdown(grid_check)))
else:  # live, on this page's pairs
    run = ablation(grounder, data.selected, settings, window=(lo, hi), batch_images=batch_images)
    rows, example = run.rows, run.example
results = pd.DataFrame(rows)
results.to_csv(out / "ablation_pairs.csv", index=False)


grid_df = results[results.setting == "grid"].astype({"L": int, "T": int})
cells = {m: grid_cells(results, m) for m in ["miou", "auc", "cnr_abs"]}
pd.concat(cells, names=["metric", "L"]).to_csv(out / "ablation_grid.csv")

# %% [markdown]
# ## The grid

# %% tags=["hide-input"]
fig, axes = plt.subplots(3, 1, figsize=(8, 10.5), constrained_layout=True)
titles = {"miou": "mIoU", "auc": "AUC-ROC", "cnr_abs": "|CNR|"}
for ax, (m, tab) in zip(axes, cells.items()):
    im = ax.imshow(tab.values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tab.columns)), [f"{t}%" for t in tab.columns])
    ax.set_yticks(range(len(tab.index)), tab.index)
    ax.set_xlabel("T (window width, % of steps)")
    ax.set_ylabel("L (middle layers)")
    ax.set_title(f"class-averaged {titles[m]}")
    for i in range(tab.shape[0]):
        for j in range(tab.shape[1]):
            ax.text(j, i, f"{tab.values[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    if paper_L in tab.index and paper_T in tab.columns:
        i, j = list(tab.index).index(paper_L), list(tab.columns).index(paper_T)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    top = np.unravel_index(np.nanargmax(tab.values), tab.shape)
    ax.add_patch(plt.Rectangle((top[1] - 0.45, top[0] - 0.45), 0.9, 0.9, fill=False, ec="white", lw=1.2, ls="--"))
    fig.colorbar(im, ax=ax, shrink=0.8)
figures.publish(fig, out, "ablation_grid")

# %% [markdown]
# ```{glue:figure} ablation_grid
# :name: fig-03-ablation-grid
#
# Class-averaged mIoU, AUC-ROC and |CNR| for every number of middle layers L (rows)
# and window width T (columns), each cell from the same recordings. The red square is the paper's
# summary choice (L = 6, T = 20 %); the dashed white square is the cell with the highest mean in
# this run (whether it is better than the paper's setting is tested in the next section). The
# paper reports its best setting in the middle of the grid (few middle layers, a middle window);
# where this run's best cell lies is what the dashed square shows.
# ```

# %% [markdown]
# ## The paper's settings and the highest-scoring cells
#
# Each row: class-averaged mean with a 95% bootstrap interval (pairs resampled within each class).
# The cell with the highest mean of each metric is compared with the paper code's setting on the
# same pairs by a paired bootstrap of the difference; only a difference whose interval excludes 0
# says that one setting is better on these pairs.

# %% tags=["hide-input"]
top_cells = {m: tab.stack().idxmax() for m, tab in cells.items()}
paper_code = results[results.setting == "paper code (layers 3, 4, 6, 7)"]
settings_shown = {"paper summary: L = 6, T = 20 %": grid_df[(grid_df["L"] == paper_L) & (grid_df["T"] == paper_T)],
                  "paper code: layers 3, 4, 6, 7, window of T = 20 %": paper_code}
for m, (L, T) in top_cells.items():
    settings_shown[f"highest mean {titles[m]}: L = {int(L)}, T = {int(T)} %"] = \
        grid_df[(grid_df["L"] == int(L)) & (grid_df["T"] == int(T))]
summary = pd.DataFrame({name: {titles[m]: figures.fmt_ci(class_averaged_ci(df, m, n_boot=n_boot, seed=seed))
                               for m in titles} for name, df in settings_shown.items() if len(df)}).T
figures.show_table(summary, out, "ablation_summary")
verdicts, lines = {}, []
for m, (L, T) in top_cells.items():
    top = grid_df[(grid_df["L"] == int(L)) & (grid_df["T"] == int(T))]
    d = paired_difference(top, paper_code, m, n_boot=n_boot, seed=seed)
    verdicts[f"{m}_difference"] = {"cell": [int(L), int(T)], **d}
    if d["difference"] is None:
        continue
    lines.append(f"* {titles[m]}: L = {int(L)}, T = {int(T)} % minus the paper code's setting = {figures.fmt_diff(d)} "
                 f"on {d['n_pairs']} pairs: " + {
                     "above 0": "the interval excludes 0, so on these pairs this cell scores higher.",
                     "below 0": "the interval excludes 0, so on these pairs this cell scores lower.",
                     "not separable from 0": "the interval includes 0: these pairs do not separate the two.",
                     "too few pairs": f"too few pairs for a verdict (fewer than {MIN_PAIRS})."}[verdict(d)])
display(Markdown("\n".join(lines) or "No pair was scored."))

# %% [markdown]
# ## Post-processing: Gaussian and Otsu

# %% tags=["hide-input"]
pp = pd.DataFrame({name: {titles[m]: class_averaged_ci(results[results.setting == name], m, n_boot=n_boot,
                                                            seed=seed)["mean"] for m in titles}
                   for name in post}).T
pp.index = ["Gaussian + Otsu (paper)", "Otsu only", "Gaussian only", "neither"]
figures.show_table(pp, out, "postprocessing")
fig, axes = plt.subplots(1, 3, figsize=(8, 3.2), constrained_layout=True)
for ax, col in zip(axes, pp.columns):
    ax.bar(range(len(pp)), pp[col], color=["C3", "C0", "C1", "C7"])
    ax.set_xticks(range(len(pp)), pp.index, rotation=25, ha="right", fontsize=8)
    ax.set_title(f"class-averaged {col}")
figures.publish(fig, out, "postprocessing")

# %% [markdown]
# ```{glue:figure} postprocessing
# :name: fig-03-postprocessing
#
# The paper's layers and window with and without the Gaussian filter and the Otsu
# threshold. Look at mIoU: the thresholded maps are what the overlap metric rewards, so Otsu should
# raise it, while AUC-ROC (a ranking metric) changes less, and Otsu's zeros outside the mask change
# the contrast that CNR measures.
# ```

# %% [markdown]
# ## Class-name tokens against all phrase tokens (the JBHI paper's Table III)
#
# The authors' code also reads the same attention from the tokens of the finding's class name only
# ("pleural effusion" in "small left pleural effusion"); where the phrase does not contain the class
# name ("enlarged heart" for cardiomegaly) that map is empty (NaN) and the pair scores 0 (mIoU,
# CNR) and 0.5 (AUC-ROC). Both readings use the paper code's layers and window on the same pairs.
# Where a shipped run of the class-name reading is present on the phantom (`class_tokens_run`, made
# by `scripts/ship_class_tokens.sh`), it is read beside the shipped paper run on the pairs both
# scored and re-checked live like the others; otherwise both readings run live on this page's
# pairs. The line below the table says which. The difference is a paired bootstrap.

# %% tags=["hide-input"]
readings = ("all phrase tokens", "class-name tokens")
if shipped.uses_shipped(model, dataset_csv, class_tokens_run) and Path(class_tokens_run).is_dir():
    # the shipped paper run (all tokens) and the shipped class-name run, on the pairs both scored
    runs3 = {readings[0]: shipped.load_shipped(paper_run), readings[1]: shipped.load_shipped(class_tokens_run)}
    pairs3 = runs3[readings[0]].phantom_pairs(out / "phantom_shipped")
    for r in runs3.values():
        r.check_model(ldm)
        r.check_config(gd.GroundingConfig.paper(), "paper")
        r.check_data(pairs3)
    class_of = {p.phrase: p.category for p in pairs3}
    class_check = shipped.recheck(runs3[readings[1]], ClassNameTokens(gd.Grounder(ldm, gd.GroundingConfig.paper(),
                                                                                  batch_size=batch_images), class_of),
                                  pairs3, out / "class_tokens_recheck", n=fast_recheck_pairs, seed=seed,
                                  batch_images=batch_images)
    display(Markdown(shipped.recheck_markdown(class_check)))
    both = shipped.compare_presets(runs3[readings[0]], runs3[readings[1]], list(titles), n_boot=n_boot, seed=seed)
    stats3 = {m: {readings[0]: v["a"], readings[1]: v["b"]} for m, v in both["metrics"].items()}
    diffs3, n3 = {m: v["difference"] for m, v in both["metrics"].items()}, both["n_pairs"]
    if n3 < min_paired_pairs:
        raise ValueError(f"the shipped paper and class-name runs share {n3} scored pairs, fewer than the "
                         f"{min_paired_pairs} this page promises; finish scripts/ship_class_tokens.sh")
    phrases3, source3 = pairs3, f"shipped runs {paper_run} and {class_tokens_run}"
else:  # live, on this page's pairs, through the evaluation runner (the inversions are shared)
    class_of = {p.phrase: p.category for p in data.selected}
    rows3 = {}
    for name, method in zip(readings, (grounder, ClassNameTokens(grounder, class_of))):
        folder = out / ("tokens_all" if name == readings[0] else "tokens_class")
        evaluate(method, data.selected, folder, dataset=data.description, seed=seed, n_boot=n_boot, progress=False,
                 batch_images=batch_images)
        rows3[name] = pd.DataFrame([r for r in load_results(folder) if r.get("status") == "ok"])
    stats3 = {m: {name: class_averaged_ci(df, m, n_boot=n_boot, seed=seed) for name, df in rows3.items()}
              for m in titles}
    diffs3 = {m: paired_difference(rows3[readings[1]], rows3[readings[0]], m, n_boot=n_boot, seed=seed)
              for m in titles}
    n3, phrases3, source3 = len(rows3[readings[1]]), data.selected, "live, this page's pairs"
absent = sorted({p.phrase for p in phrases3 if not word_positions(ldm.tokenizer, p.phrase, p.category)})
n_phrases = len({p.phrase for p in phrases3})
table_iii = {"n_pairs": int(n3), "phrases_without_class_name": len(absent), "phrases": n_phrases,
             "difference": {m: {**d, "verdict": verdict(d)} for m, d in diffs3.items()},
             "source": source3}
tab3 = {titles[m]: {**{name: figures.fmt_ci(st) for name, st in stats3[m].items()},
                    "class-name minus all": figures.fmt_diff(diffs3[m])} for m in titles}
figures.show_table(pd.DataFrame(tab3), out, "table_iii")
said = {"above 0": "the class-name tokens score higher", "below 0": "the class-name tokens score lower",
        "not separable from 0": "these pairs do not separate the two readings",
        "too few pairs": f"too few pairs for a verdict (fewer than {MIN_PAIRS})"}
display(Markdown(
    f"On {n3} pairs ({source3}): {len(absent)} of {n_phrases} phrases do not contain their class name, so their class-name map "
    "is empty. " + " ".join(f"{titles[m]}: {said[v['verdict']]}." for m, v in table_iii["difference"].items())))

# %% [markdown]
# ## What a cell looks like

# %% tags=["hide-input"]
image, pair, pair_boxes, rec = example
phr = rec.phrases.index(pair.phrase)
show_L = [L for L in (1, paper_L, n_layers) if L in L_values]
show_T = [T for T in (min(T_values), paper_T, max(T_values)) if T in T_values]
fig, axes = plt.subplots(len(show_L), len(show_T), figsize=(2.4 * len(show_T), 2.4 * len(show_L)),
                         squeeze=False, constrained_layout=True)
for i, L in enumerate(show_L):
    for j, T in enumerate(show_T):
        hm = rec.aggregate(middle_layers=L, window_percent=T).heatmaps[phr]
        figures.overlay(axes[i, j], figures.screen(image, show), hm, pair_boxes, title=f"L = {L}, T = {T} %")
fig.suptitle(f"'{pair.phrase}'", fontsize=9)
figures.publish(fig, out, "cells_example")

# %% [markdown]
# ```{glue:figure} cells_example
# :name: fig-03-cells-example
#
# The final heatmap of one pair for a few cells of the grid (rows: L, columns: T),
# with the phrase's ground-truth box. Look at how one layer or a narrow window gives a noisy map,
# and how all layers and all steps blur the finding into the anatomy.
# ```

# %% [markdown]
# ## The fast preset: what fewer steps cost
#
# The fast preset (`GroundingConfig.fast()`) keeps the paper's layers, smoothing and Otsu and puts the
# window at the paper's place and width as a share of the steps, but inverts in 100 nominal steps
# instead of 300, about a third of the model calls (see [the cost page](../cost.md)). What that
# costs in accuracy is measured here on the phantom test split: the shipped paper-preset run of
# [the main table](02_main_table) and a shipped fast-preset run of the same pairs
# (`book/results/phantom-fast/`, made with `groundiff evaluate --preset fast`), each refused unless
# its model fingerprint and configuration are the ones loaded here and the regenerated split
# reproduces its pairs; a few pairs of the fast run are grounded again live and must match it
# (the main table re-checks the paper run the same way). Each metric: the class-averaged mean of
# each preset with a 95% bootstrap interval, and the paired difference fast minus paper with a
# paired bootstrap interval (the same resampled pairs for both presets). Only a difference whose
# interval excludes 0 says that one preset scores higher on these pairs.

# %% tags=["hide-input"]
fast_vs_paper = None
if shipped.uses_shipped(model, dataset_csv, paper_run) and fast_run:
    presets = {"paper": shipped.load_shipped(paper_run), "fast": shipped.load_shipped(fast_run)}
    split_pairs = presets["paper"].phantom_pairs(out / "phantom_shipped")
    for name, r in presets.items():
        r.check_model(ldm)
        r.check_config(gd.GroundingConfig.preset(name), "paper")
        r.check_data(split_pairs)
    fast_check = shipped.recheck(presets["fast"], gd.Grounder(ldm, gd.GroundingConfig.fast(), batch_size=batch_images),
                                 split_pairs, out / "fast_recheck", n=fast_recheck_pairs, seed=seed,
                                 batch_images=batch_images)
    fast_vs_paper = shipped.compare_presets(presets["paper"], presets["fast"], list(titles) + ["pointing"],
                                            n_boot=n_boot, seed=seed)
    if fast_vs_paper["n_pairs"] < min_paired_pairs:
        raise ValueError(f"the shipped paper and fast runs share {fast_vs_paper['n_pairs']} scored pairs, fewer than "
                         f"the {min_paired_pairs} this page promises; ship both finished runs (scripts/ship_results.py)")
    labels = {**titles, "pointing": "pointing game", "auc_binned": "AUC-ROC (5 bins)", "cnr_signed": "CNR (signed)"}
    cmp = pd.DataFrame({labels[m]: {"paper preset": figures.fmt_ci(v["a"]), "fast preset": figures.fmt_ci(v["b"]),
                                    "fast - paper": figures.fmt_diff(v["difference"]),
                                    "interval excludes 0": v["difference"]["separated"]}
                        for m, v in fast_vs_paper["metrics"].items()}).T
    figures.show_table(cmp, out, "fast_vs_paper")
    lines = [f"* {fast_vs_paper['n_pairs']} pairs scored by both runs ("
             + ", ".join(f"{c} {n}" for c, n in fast_vs_paper["per_class"].items()) + ")."]
    for m, v in fast_vs_paper["metrics"].items():
        d = v["difference"]
        lines.append(f"* {labels[m]}: fast minus paper {figures.fmt_diff(d)}: "
                     + (f"the interval excludes 0, the fast preset scores {'higher' if d['difference'] > 0 else 'lower'} "
                        "on these pairs." if d["separated"] else "the interval includes 0: these pairs do not separate "
                                                                 "the presets."))
    sec = fast_vs_paper["seconds"]
    lines.append(f"* Time: {sec['a']:.2f} s per pair with the paper preset and {sec['b']:.2f} s with the fast preset "
                 f"on these pairs: the wall-clock grounding seconds each row records, measured where the runs were "
                 f"made (host {presets['paper'].machine} in run.json) by `{presets['paper'].command}` and "
                 f"`{presets['fast'].command}`. On a machine shared with other work they include waiting; the "
                 "single-threaded CPU time of both presets is on [the cost page](../cost.md).")
    lines.append("* " + shipped.recheck_markdown(fast_check, labels).replace("**Live re-check passed**",
                                                                            "**Live re-check of the fast run passed**"))
    display(Markdown("\n".join(lines)))
else:
    display(Markdown("The shipped paper and fast runs are of the phantom model on the phantom test split; this page "
                     "runs on other data or another model, so the comparison is left out. Run `groundiff evaluate` "
                     "with `--preset paper` and `--preset fast` on your data to compare them."))

# %% tags=["hide-input"]
metrics_file = pages.save_json({"dataset": data.description, "config": config.to_dict(), "L_values": L_values,
                                   "T_values": T_values, "windows": windows,
                                   "grid": {m: tab.to_dict() for m, tab in cells.items()},
                                   "postprocessing": pp.to_dict(), "summary": summary.to_dict(),
                                   "paired_vs_paper_code": verdicts, "fast_vs_paper": fast_vs_paper,
                                   "table_iii": table_iii},
                                  out, "ablation")

# %% [markdown]
# ## What this page shows
#
# Computed from this page's metrics file by one rule (a paired bootstrap interval that excludes 0, on at
# least 30 pairs; fewer pairs get no verdict), not written by hand.

# %% tags=["remove-input"]
display(Markdown(conclusions.ablation_page(metrics_file)))
