#!/usr/bin/env bash
# The device checks of issue 22, as one prepared script for a machine with a CUDA GPU (never CI).
#   bash scripts/gpu_checks.sh OUTDIR
# 1. tests/test_cuda.py: float32 / bfloat16 / float16 maps against CPU float32, early exit and image
#    batching against the plain run, peak memory -> OUTDIR/cuda_tests.json and cuda_tests.log;
# 2. benchmarks/bench_gpu.py at the paper's size (random weights), bfloat16 -> OUTDIR/engine_gpu.json.
# Needs a CUDA build of torch==2.13.0 in .venv (or PYTHON=...). Copy OUTDIR's files into
# benchmarks/results/ with a note of the machine, and record what ran in benchmarks/results/README.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_checks.sh OUTDIR}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt" || exit 2
GROUNDIFF_CUDA_REPORT="$OUT/cuda_tests.json" timeout 240 "$PY" -m pytest -q tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.log"
tests=${PIPESTATUS[0]}
timeout 300 "$PY" benchmarks/bench_gpu.py --device cuda --out "$OUT/engine_gpu.json" 2>&1 | tail -40 | tee "$OUT/bench_gpu.log"
bench=${PIPESTATUS[0]}
echo "cuda tests exit $tests, benchmark exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
