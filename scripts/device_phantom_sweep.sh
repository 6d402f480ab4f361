#!/usr/bin/env bash
# Phantom-model design sweep on a lent GPU (model selection only; see book/phantom.md).
# Trains candidate recipes of groundiff_core.phantom.train side by side on one GPU, then scores
# their exports on validation phantoms with scripts/phantom_sweep_eval.py. Writes to $OUT.
set -u
OUT=${OUT:-/tmp/sweep_out}; mkdir -p "$OUT"
W=/tmp/sweep; mkdir -p $W
TRAIN_LIMIT=${TRAIN_LIMIT:-330}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $OUT/gpu.txt
common="-m groundiff_core.phantom.train --device cuda --lr 5e-4 --save-every 500 --export-every 1000"
v3s="--vae-channels 16,32 --unet-channels 16,32,64 --unet-heads 1,2,4"
v3w="--vae-channels 16,32 --unet-channels 32,64,128 --unet-heads 1,4,4"
timeout $TRAIN_LIMIT python3 $common $v3s --unet-steps 2000 --out $W/A  > $W/A.log 2>&1 &
timeout $TRAIN_LIMIT python3 $common $v3s --unet-steps 6000 --out $W/A6 > $W/A6.log 2>&1 &
timeout $TRAIN_LIMIT python3 $common $v3w --unet-steps 3000 --out $W/B  > $W/B.log 2>&1 &
timeout $TRAIN_LIMIT python3 $common --unet-steps 6000 --out $W/D > $W/D.log 2>&1 &
wait
for r in A A6 B D; do tail -n 2 $W/$r.log; done
python3 -c "from groundiff_core.phantom.generator import write_phantom_set as w; w('$W/val', 80, split='val')"
pick() { ls -d $W/$1/model-0* 2>/dev/null | awk -v k="$2" 'k=="all" || NR%k==0'; ls -d $W/$1/model-0* 2>/dev/null | tail -n 1; }
for r in A A6 B D; do
  models=$(pick $r 2 | sort -u)
  [ -n "$models" ] && python3 scripts/phantom_sweep_eval.py $models --data $W/val --out $OUT/sweep_$r.json \
    --batch 20 > $W/eval_$r.log 2>&1 &
done
wait
grep -h "model-" $W/eval_*.log | tee $OUT/eval.log
for r in A A6 B D; do
  last=$(ls -d $W/$r/model-0* 2>/dev/null | tail -n 1)
  [ -n "$last" ] && (cd $W/$r && tar cf $OUT/$r.tar train_log.jsonl $(basename $last))
done
tail -n 3 $W/eval_*.log > $OUT/eval_tails.txt
ls -la $OUT
