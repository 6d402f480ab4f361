#!/usr/bin/env bash
# After the recipe sweep (scripts/phantom_sweep_cpu.sh): install the chosen model, evaluate it for
# its model card (the paper preset, its image-shuffle control from the same inversions, the phrase
# prior, the centre prior, a random map; python -m groundiff_core.phantom.card) and ship the runs the
# book reads (book/results/). Resumable: every evaluation continues where it stopped.
#
#   W=/work/runs/sweep4 R=/work/runs/card bash scripts/ship_phantom.sh > /work/runs/ship.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-/work/runs/sweep4}; R=${R:-/work/runs/card}; PY=${PY:-.venv/bin/python}
# single-threaded, as the book's live re-check grounds (the thread count changes the last bits);
# the card's evaluations and the fast-preset run go side by side on the two cores
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
STEPS=${STEPS:-1500}; PROBE=${PROBE:-400}
declare -A MIX=([A]=0.45,0.45,0.10 [B]=0.20,0.70,0.10 [C]=0.70,0.20,0.10)
# without the sweep's folder (the model is already installed and committed), start at the card
if [ -f "$W/choice.txt" ]; then
best=$(cat "$W/choice.txt")
init=""; [ "$best" != A ] && init="--init-vae $W/A/$(printf "model-%05d" "$PROBE")"
date -u +"install $best %FT%TZ"
# the sweep's own command for the winner: it finds the run finished, exports it again and installs it
$PY -m groundiff_core.phantom.train --lr 5e-4 --threads 2 --unet-steps "$STEPS" --save-every 100 --export-every 100000 \
  --captions "${MIX[$best]}" $init --out "$W/$best" --install >> "$W/$best.log" 2>&1
$PY - "$W" <<'PYEOF' > benchmarks/results/phantom_v4_sweep.json
import json, sys
w = sys.argv[1]
res = json.load(open(f"{w}/sweep.json"))
choice = open(f"{w}/choice.txt").read().strip()
mixes = {"A": "0.45,0.45,0.10", "B": "0.20,0.70,0.10", "C": "0.70,0.20,0.10"}
cands = {}
for key, r in res.items():
    if key == "phrase-prior":
        name = "phrase prior (image-blind), same pairs"
    else:
        path, preset = key.rsplit(":", 1)
        run, step = path.split("/")[-2:]
        name = f"{run}: captions {mixes[run]} (phrase,report,empty), step {int(step.split('-')[1])}, {preset} preset"
    cands[name] = {k: r[k] for k in ("auc", "miou", "cnr_abs", "text_sensitivity", "n_pairs")}
note = ("Validation phantoms (the 'val' seeds), fast preset, paper's layers. Three caption mixes trained to "
        "the same probe step with the same seed, data and learning-rate schedule; the highest class-averaged "
        f"mIoU + AUC-ROC ({choice}) trained on to the schedule's end (scripts/phantom_sweep_cpu.sh).")
print(json.dumps({"note": note, "choice": choice, "candidates": cands}, indent=1))
PYEOF
fi
date -u +"card %FT%TZ"
[ -f "$R/testset/annotations.csv" ] || .venv/bin/groundiff phantom --out "$R/testset" --n 220 --split test --no-progress
card="$PY -m groundiff_core.phantom.card --work $R --batch-images 4"
# the paper-preset run in two shards side by side, then its image-shuffle control (from the cached inversions)
$card --only ldm --shard 0/2 > "$R.ldm0.log" 2>&1 & a=$!
$card --only ldm --shard 1/2 > "$R.ldm1.log" 2>&1 & b=$!
wait $a $b
date -u +"control %FT%TZ"
$card --only ldm-shuffled --shard 0/2 > "$R.shuf0.log" 2>&1 & a=$!
$card --only ldm-shuffled --shard 1/2 > "$R.shuf1.log" 2>&1 & b=$!
wait $a $b
date -u +"fast %FT%TZ"
.venv/bin/groundiff evaluate --model phantom --dataset phantom --csv "$R/testset/annotations.csv" --images "$R/testset" \
  --out "$R/fast" --preset fast --n-pairs 240 --batch-images 4 --device cpu --no-progress > "$R.fast.log" 2>&1 & a=$!
$card --merge 2 --sweep benchmarks/results/phantom_v4_sweep.json > "$R.card.log" 2>&1
wait $a
date -u +"class-name tokens %FT%TZ"
bash scripts/ship_class_tokens.sh
date -u +"ship %FT%TZ"
$PY scripts/ship_results.py "$R/ldm" "$R/testset" book/results/phantom-paper
$PY scripts/ship_results.py "$R/ldm-shuffled" "$R/testset" book/results/phantom-paper-shuffled
$PY scripts/ship_results.py "$R/fast" "$R/testset" book/results/phantom-fast
date -u +"done %FT%TZ"
