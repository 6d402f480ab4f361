#!/usr/bin/env bash
# The JBHI paper's Table III on the phantom test split: the paper preset read from the class name's
# tokens only (groundiff evaluate --tokens class-name), a seeded 240 of the 428 pairs of book/results/phantom-paper
# (about 40 min on 2 free cores),
# two single-threaded shards side by side (the book's live re-check grounds single-threaded), merged
# and shipped to book/results/phantom-class-tokens. Resumable: rerun it and each shard continues.
#
#   R=/work/runs/card bash scripts/ship_class_tokens.sh > /work/runs/class_tokens.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
R=${R:-/work/runs/card}; PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
[ -f "$R/testset/annotations.csv" ] || .venv/bin/groundiff phantom --out "$R/testset" --n 220 --split test --no-progress
run() {
  .venv/bin/groundiff evaluate --model phantom --dataset phantom --csv "$R/testset/annotations.csv" --images "$R/testset" \
    --preset paper --tokens class-name --n-pairs 240 --batch-images 4 --device cpu --no-progress --shard "$1/2" --out "$R/class-tokens-$1of2"
}
run 0 > "$R.class0.log" 2>&1 & a=$!
run 1 > "$R.class1.log" 2>&1 & b=$!
wait $a $b
.venv/bin/groundiff evaluate --merge "$R/class-tokens-0of2" "$R/class-tokens-1of2" --out "$R/class-tokens"
$PY scripts/ship_results.py "$R/class-tokens" "$R/testset" book/results/phantom-class-tokens
date -u +"class-name tokens shipped %FT%TZ"
