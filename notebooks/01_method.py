# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The method, step by step
#
# One image and one phrase through every stage of the paper's Algorithm 1
# {cite:p}`vilouras2024zeroshot`:
#
# 1. the image is centre-cropped to the model's input and encoded to a latent;
# 2. a deterministic DDIM inversion {cite:p}`song2021ddim` walks the latent towards noise, driven by
#    the model's *unconditional* prediction (guidance 0);
# 3. at each step of a window in the middle of the trajectory the phrase-conditioned branch is run
#    too, only to read its cross-attention between image positions and the phrase's tokens;
# 4. the maps of the chosen layers and steps are normalised, resized and averaged;
# 5. a Gaussian filter and an Otsu threshold {cite:p}`otsu1979threshold` clean the map, which goes
#    back to the original image grid.
#
# Every picture below comes from `groundiff_core` calls (`Grounder.record` keeps the attention of
# every layer and step from one inversion; `Recording.aggregate` combines any subset of it). With
# the default parameters the image is a phantom from groundiff's synthetic test bed
# ([introduction](../intro.md)).

# %% tags=["parameters"]
model = "phantom"  # "phantom", "tiny", a diffusers folder, or the paper's MONAI checkpoint folder
dataset_csv = None  # None: the phantom test split, generated into output_dir
images_root = None
dataset = "mscxr"
split = None
phantom_images = 40
n_pairs = 20  # candidate pairs (seeded subset); the walk-through takes one whose image has another finding
pair_index = 0  # which of those candidates
seed = 0
device = "cpu"  # "cuda" for the paper's model
dtype = None  # e.g. "float16" on a GPU
text_encoder = None  # paper's model: the SD 2.1 base folder, if not inside the model folder
output_dir = "book/notebooks/01_method_files"
inversion_cache = "book/notebooks/_inversions"  # inversions shared by the pages of a build (content-keyed; None: off)
num_inference_steps = 300  # the paper's 300 (334 trailing steps); the window scales with it
trajectory_fractions = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]  # where along the trajectory to decode
generate_phrases = ["right pleural effusion", "left apical pneumothorax", "cardiomegaly",
                    "consolidation in the left upper lung"]  # [] to skip the generation figure
generate_steps = 50  # DDIM steps of the generation figure
guidance = 3.0  # classifier-free guidance of the generation figure
show_images = None  # draw the dataset's images; None: only for the phantom (keeps patient images out of the page)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import groundiff_core as gd
from groundiff_core.book import pages
from groundiff_core.evaluation.boxes import scored_boxes
from groundiff_core.book import provenance
from groundiff_core.book import figures
from groundiff_core.book import conclusions
from groundiff_core.evaluation import metrics
from groundiff_core.io.datasets import group_by_image
from groundiff_core.io.images import load_image
from groundiff_core.engine.trajectory import inversion_trajectory

# %% tags=["hide-input"]
out, data, ldm = pages.setup_notebook(
    output_dir, seed=seed, model=model, device=device, dtype=dtype, text_encoder=text_encoder,
    dataset_csv=dataset_csv, images_root=images_root, dataset=dataset, split=split, n_pairs=n_pairs,
    phantom_images=phantom_images, display_precision=None)
config = gd.GroundingConfig.paper().with_steps(num_inference_steps)
display(provenance.provenance_box(data, ldm, preset=f"paper ({num_inference_steps} inference steps)",
                                config=config, output_dir=out))
show = pages.resolve_show_images(show_images, data)

# %% [markdown]
# ## The pair

# %% tags=["hide-input"]
by_image = group_by_image(data.pairs)
scorable = pages.scorable_pairs(data.selected, crop_size=ldm.input_size)  # the runner skips the others
candidates = [p for p in scorable if len(by_image[p.image_path]) > 1] or scorable
pair = candidates[pair_index % len(candidates)]
image = load_image(pair.image_path)
shown_image = figures.screen(image, show)  # a blank of the image's size when images are not shown
# boxes rescaled to the image actually read and cut to the model's crop, exactly as the runner scores them
boxes, box_notes = scored_boxes(pair, image.shape, ldm.input_size)
others, other_boxes = [], []
for q in by_image[pair.image_path]:
    qb = scored_boxes(q, image.shape, ldm.input_size)[0]
    if q.phrase != pair.phrase and len(qb):
        others.append(q)
        other_boxes.append(qb)
grounder = gd.Grounder(ldm, config, inversion_cache=pages.inversion_cache(inversion_cache))
layers = grounder.layers
print(f"phrase: {pair.phrase!r} ({pair.category}); other finding(s) on the image: "
      f"{[q.phrase for q in others]}")
print(f"image {image.shape[1]}x{image.shape[0]} px, model input {ldm.input_size}x{ldm.input_size}, "
      f"{len(grounder.schedule())} inversion steps, window {config.window}, layers {config.layers}")

# %% tags=["hide-input"]
if box_notes:
    print("boxes as the runner scores them:", "; ".join(box_notes))
fig, axes = figures.grid(1 + len(others), ncols=3, size=3.0)
figures.overlay(axes[0], shown_image, None, boxes, title=f"'{pair.phrase}'")
figures.side_labels(axes[0])
for ax, q, qb in zip(axes[1:], others, other_boxes):
    figures.overlay(ax, shown_image, None, qb, title=f"other: '{q.phrase}'")
    figures.side_labels(ax)
figures.publish(fig, out, "pair")

# %% [markdown]
# ```{glue:figure} pair
# :name: fig-01-pair
#
# The image with the ground-truth box(es) of the phrase we ground (left) and of the
# other finding(s) on the same image. R and L mark the patient's right and left (the patient's
# right is on the image's left). A method that ignores the text cannot tell these apart.
# ```

# %% [markdown]
# ## What the model draws
#
# The grounding method reads a *generative* model. Before reading its attention, a look at what it
# has learned: images sampled from noise for a few phrases (deterministic DDIM with classifier-free
# guidance, `groundiff_core.engine.sampling.generate`; not part of the grounding method).

# %% tags=["hide-input"]
if generate_phrases:
    from groundiff_core.engine.sampling import generate

    samples = generate(ldm, generate_phrases, num_steps=generate_steps, guidance_scale=guidance, seed=seed)
    fig, axes = figures.grid(len(samples), ncols=min(len(samples), 4), size=2.6)
    for ax, ph, im in zip(axes, generate_phrases, samples):
        figures.show_image(ax, im, title=f"'{ph}'")
        figures.side_labels(ax)
    figures.publish(fig, out, "generated")
else:
    figures.publish(figures.placeholder("no phrases to generate (generate_phrases = [])"), out, "generated")

# %% [markdown]
# ```{glue:figure} generated
# :name: fig-01-generated
#
# One sample per phrase, from the same seed. Look at whether the finding appears, and
# on the side the phrase names (R/L: the patient's right and left). The grounding below uses no
# sampling at all: it inverts an image of the dataset.
# ```

# %% [markdown]
# ## The inversion trajectory
#
# The latent is walked from the clean image (step -1) towards noise. With guidance 0 this
# trajectory does not depend on the phrase, so one inversion serves every phrase of the image.

# %% tags=["hide-input"]
n_steps = len(grounder.schedule())
shown = sorted({min(n_steps - 1, int(round(f * (n_steps - 1)))) for f in trajectory_fractions})
traj = inversion_trajectory(ldm, image, [-1, *shown], config)
fig, axes = figures.grid(len(traj.step_indices), ncols=len(traj.step_indices), size=1.9)
for ax, s, t, im in zip(axes, traj.step_indices, traj.timesteps, traj.images):
    inside = config.window[0] <= s < config.window[1]
    title = ("z0" if s < 0 else f"step {s}\nt = {t}") + (" (window)" if inside else "")
    figures.show_image(ax, figures.screen(im, show), title=title)
figures.publish(fig, out, "trajectory")

# %% [markdown]
# ```{glue:figure} trajectory
# :name: fig-01-trajectory
#
# Decoded latents along the DDIM inversion (step index and timestep t). Look at how
# the anatomy dissolves into noise as t grows; the steps marked "window" are those whose attention
# the paper reads: the middle of the trajectory, where the image is noisy enough for the text to
# matter and still structured enough to be localised.
# ```

# %% [markdown]
# ## Cross-attention per layer and per step
#
# One recording of the whole trajectory keeps, for every cross-attention layer and step, the
# attention of the phrase's tokens averaged over those tokens (and over heads).

# %% tags=["hide-input"]
phrases = [pair.phrase] + [q.phrase for q in others]
rec = grounder.record(image, [pair.phrase])  # the walk-through's phrase; the image's other phrases come below
mid = (config.window[0] + config.window[1]) // 2
fig, axes = figures.grid(len(layers), ncols=6, size=1.8)
for ax, layer in zip(axes, layers):
    m = rec.layer_maps(layer.index, mid)[0]
    ax.imshow(m, cmap=figures.HEAT_CMAP)
    read = layer.index in config.resolve_layers(len(layers))
    ax.set_title(f"layer {layer.index} ({m.shape[0]}x{m.shape[1]})" + ("\nread" if read else ""),
                 fontsize=8, color="C3" if read else "k")
figures.publish(fig, out, "per_layer")

# %% [markdown]
# ```{glue:figure} per_layer
# :name: fig-01-per-layer
#
# Token-averaged cross-attention of the phrase at each of the model's
# cross-attention layers (numbered in execution order: down blocks, middle, up blocks; native
# resolution in brackets), at the middle step of the window. The layers the paper reads are
# marked "read" in red. Look at which layers put their mass on the
# phrase's box and which spread it over the anatomy.
# ```

# %% tags=["hide-input"]
probe = config.resolve_layers(len(layers))[len(config.resolve_layers(len(layers))) // 2]
step_ids = np.unique(np.linspace(0, n_steps - 1, 12).round().astype(int))
fig, axes = figures.grid(len(step_ids), ncols=6, size=1.8)
for ax, s in zip(axes, step_ids):
    ax.imshow(rec.layer_maps(probe, int(s))[0], cmap=figures.HEAT_CMAP)
    inside = config.window[0] <= s < config.window[1]
    ax.set_title(f"step {s}" + (" (window)" if inside else ""), fontsize=8, color="C3" if inside else "k")
figures.publish(fig, out, "per_step")

# %% [markdown]
# ```{glue:figure} per_step
# :name: fig-01-per-step
#
# The same phrase at one of the layers the paper reads (the middle one of them)
# across the trajectory. Early steps
# (little noise) attend to edges and texture; late steps (mostly noise) lose the image. Look at the
# steps inside the paper's window (red titles).
# ```

# %% [markdown]
# ## Per token
#
# The method averages the attention over the phrase's tokens (those between the start and end
# tokens). Each token's own map comes from the same phrase, the same inversion settings, layers and
# window, reading one token position at a time (`Grounder.ground_tokens`: one inversion for all
# tokens, each map the one `GroundingConfig(tokens="token:i")` gives); before normalisation these
# maps average exactly to the phrase's map.

# %% tags=["hide-input"]
token_ids = ldm.tokenizer(pair.phrase)["input_ids"]
tokens = ldm.tokenizer.convert_ids_to_tokens(token_ids)[1:-1]
# the phrase's map from the recording above (the same as grounder.ground, checked below)
token_maps = [rec.aggregate(config=config).heatmaps[0], *grounder.ground_tokens(image, pair.phrase).heatmaps]
titles = [f"'{pair.phrase}'"] + [f"token {i}: '{t.replace('</w>', '')}'" for i, t in enumerate(tokens, 1)]
fig, axes = figures.grid(len(titles), ncols=min(len(titles), 6), size=2.2)
for ax, title, hm in zip(axes, titles, token_maps):
    figures.overlay(ax, shown_image, hm, boxes, title=title)
figures.publish(fig, out, "per_token")

# %% [markdown]
# ```{glue:figure} per_token
# :name: fig-01-per-token
#
# Final heatmap of the whole phrase (first panel) and of each of its tokens read on
# its own, with the phrase's ground-truth box. Look at which tokens carry the location (the
# finding's name, or the side) and which light up everything.
# ```

# %% [markdown]
# ## Aggregation and post-processing

# %% tags=["hide-input"]
raw = rec.aggregate(config=config, smooth=False, otsu=False, return_raw=True)
smooth = rec.aggregate(config=config, smooth=True, otsu=False)
final = rec.aggregate(config=config)
stages = [("mean attention\n(selected layers and steps)", raw.raw[0]),
          ("Gaussian smoothing", smooth.model_maps[0]),
          ("Otsu threshold", final.model_maps[0])]
geom = final.geometry
fig, axes = figures.grid(4, ncols=4, size=2.8)
for ax, (title, m) in zip(axes, stages):
    figures.overlay(ax, figures.screen(geom.to_model(torch.as_tensor(image)[None, None])[0, 0].numpy(), show), m,
                    geom.boxes_to_model(boxes), title=title, vmax=None)
figures.overlay(axes[3], shown_image, final.heatmaps[0], boxes, title="final, original grid")
figures.side_labels(axes[3])
figures.publish(fig, out, "postprocessing")

# %% [markdown]
# ```{glue:figure} postprocessing
# :name: fig-01-postprocessing
#
# From the averaged attention to the final heatmap, on the model's input grid (first
# three panels) and back on the original image (last panel; transparent where the centre crop cut
# the image). The Gaussian removes the blockiness of the low-resolution attention; Otsu keeps only
# the part above an automatic threshold, which is what the overlap metrics reward.
# ```

# %% tags=["hide-input"]
check = grounder.ground(image, phrases)  # every phrase of the image from one inversion
assert np.allclose(np.nan_to_num(check.heatmaps[0]), np.nan_to_num(final.heatmaps[0]), atol=1e-5), \
    "Recording.aggregate should equal Grounder.ground"
rows = {}
for k, ph in enumerate(phrases):
    rows[ph] = metrics.all_metrics(final.heatmaps[0], boxes if k == 0 else other_boxes[k - 1])
table = pd.DataFrame(rows).T
table.index = [f"heatmap of '{pair.phrase}' vs boxes of '{ph}'" for ph in table.index]
figures.show_table(table, out, "pair_metrics")
if len(table) > 1:  # what the table shows, from its numbers
    own, rest = table.iloc[0], table.iloc[1:]
    said = [f"{label} {'higher' if (own[m] > rest[m]).all() else 'not higher'} on its own phrase's boxes"
            for m, label in (("auc", "AUC-ROC"), ("miou", "mIoU"))]
    display(Markdown(f"On this pair the heatmap scores {' and '.join(said)} than on the other finding's boxes "
                     "(one pair: an illustration, not a verdict; the main table counts this over every pair)."))

# %% [markdown]
# The same heatmap scored against its own phrase's boxes (first row) and against the other
# findings' boxes: if the map follows the text, the first row is the highest. The recording and a
# direct `Grounder.ground` call give the same map of the phrase (checked above to 1e-5).

# %% tags=["hide-input"]
fig, axes = figures.grid(len(phrases), ncols=3, size=3.0)
for k, (ax, ph) in enumerate(zip(axes, phrases)):
    figures.overlay(ax, shown_image, check.heatmaps[k], boxes if k == 0 else other_boxes[k - 1], title=f"'{ph}'")
    figures.side_labels(ax)
figures.publish(fig, out, "final_overlays")

# %% [markdown]
# ```{glue:figure} final_overlays
# :name: fig-01-final-overlays
#
# Final heatmaps of every phrase of the image, each with its own ground-truth boxes:
# the same image, the same inversion, different text. Look at whether each heatmap moves to its own
# finding.
# ```

# %% tags=["hide-input"]
metrics_file = pages.save_json({"pair": {"pair_id": pair.pair_id, "phrase": pair.phrase, "category": pair.category},
                                   "config": config.to_dict(), "n_steps": n_steps, "metrics": rows,
                                   "trajectory_steps": traj.step_indices}, out, "method_walkthrough")

# %% [markdown]
# ## What this page shows
#
# Computed from this page's metrics file by one rule (a paired bootstrap interval that excludes 0, on at
# least 30 pairs; fewer pairs get no verdict), not written by hand.

# %% tags=["remove-input"]
display(Markdown(conclusions.method_page(metrics_file)))
