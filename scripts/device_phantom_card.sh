#!/usr/bin/env bash
# Model-card evaluation of the shipped phantom LDM on a lent GPU (same runner and settings as on
# CPU; only the device and the inversion batch differ). Writes the card next to the weights and
# copies it, the evaluation and the per-method summaries to $OUT.
set -u
OUT=${OUT:-/tmp/card_out}; mkdir -p "$OUT"
W=/tmp/card
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
python3 -m groundiff_core.phantom.card --work $W --images 220 --device cuda --batch-images 24 \
  --alt-layers 0,1,2,3,4,5,6,7,8,9,10 --alt-pairs 200 > $OUT/card.log 2>&1
rc=$?
tail -n 60 $OUT/card.log
cp groundiff_core/phantom/weights/MODEL_CARD.md groundiff_core/phantom/weights/evaluation.json $OUT/ 2>/dev/null
for m in ldm ldm-alt random centre; do cp $W/$m/summary.json $OUT/summary_$m.json 2>/dev/null; done
tar czf $OUT/results.tgz -C $W ldm ldm-alt random centre 2>/dev/null
exit $rc
