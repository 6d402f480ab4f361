#!/usr/bin/env bash
# Phantom-model recipe sweep on this project's 2-core CPU machines, in ONE background run (model
# selection on validation phantoms only; the test split is never read here). Resumable: rerun the
# same command after an interruption and every stage continues from its checkpoint.
#
#   W=/work/runs/sweep4 bash scripts/phantom_sweep_cpu.sh > /work/runs/sweep4.log 2>&1 &
#
# 1. Three caption mixes (PHRASE,REPORT,EMPTY shares of the training captions), the same
#    architecture, seed and learning-rate schedule (cosine over $STEPS steps), each trained to
#    step $PROBE: A 0.45,0.45,0.10 (the previous recipe), B 0.20,0.70,0.10 (report-heavy: every
#    finding of the image named, so each must find its own words), C 0.70,0.20,0.10 (phrase-heavy:
#    the grounded sentences themselves). B and C reuse A's autoencoder.
# 2. Each scored on $VAL validation phantoms (fast preset, the paper's layers), beside the phrase
#    prior on the same pairs; the recipe with the highest class-averaged mIoU + AUC-ROC wins.
# 3. The winner trains on to $STEPS steps (the schedule's end) and is scored again; its steps
#    $PROBE and $STEPS are the sweep's fourth and fifth candidates (the "steps" dimension).
# Results: $W/sweep.json (every candidate's validation numbers) and $W/choice.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${W:-/work/runs/sweep4}; mkdir -p "$W"
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-1500}; PROBE=${PROBE:-400}; VAL=${VAL:-40}; THREADS=${THREADS:-2}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$THREADS
common="-m groundiff_core.phantom.train --lr 5e-4 --threads $THREADS --unet-steps $STEPS --save-every 100 --export-every 100000"
declare -A MIX=([A]=0.45,0.45,0.10 [B]=0.20,0.70,0.10 [C]=0.70,0.20,0.10)
probe=$(printf "model-%05d" "$PROBE")
date -u +"start %FT%TZ" | tee -a "$W/times.txt"
for r in A B C; do
  init=""; [ "$r" != A ] && init="--init-vae $W/A/$probe"
  [ -d "$W/$r/$probe" ] || $PY $common --captions "${MIX[$r]}" --stop-after "$PROBE" $init --out "$W/$r" >> "$W/$r.log" 2>&1
  date -u +"$r trained to $PROBE %FT%TZ" | tee -a "$W/times.txt"
done
$PY scripts/phantom_sweep_eval.py "$W/A/$probe" "$W/B/$probe" "$W/C/$probe" --data "$W/val" --n-images "$VAL" \
  --preset fast --prior --batch 4 --threads "$THREADS" --out "$W/sweep.json" >> "$W/eval.log" 2>&1
best=$($PY - "$W" "$probe" <<'PYEOF'
import json, sys
w, probe = sys.argv[1], sys.argv[2]
res = json.load(open(f"{w}/sweep.json"))
score = {r: res[f"{w}/{r}/{probe}:fast"]["miou"] + res[f"{w}/{r}/{probe}:fast"]["auc"] for r in "ABC"}
print(max(sorted(score), key=score.get))
PYEOF
)
echo "$best" > "$W/choice.txt"
date -u +"chose $best %FT%TZ" | tee -a "$W/times.txt"
final=$(printf "model-%05d" "$STEPS")
init=""; [ "$best" != A ] && init="--init-vae $W/A/$probe"
[ -d "$W/$best/$final" ] || $PY $common --captions "${MIX[$best]}" $init --out "$W/$best" >> "$W/$best.log" 2>&1
date -u +"$best trained to $STEPS %FT%TZ" | tee -a "$W/times.txt"
$PY scripts/phantom_sweep_eval.py "$W/$best/$final" --data "$W/val" --n-images "$VAL" --preset fast --prior \
  --batch 4 --threads "$THREADS" --out "$W/sweep.json" >> "$W/eval.log" 2>&1
date -u +"done %FT%TZ" | tee -a "$W/times.txt"
