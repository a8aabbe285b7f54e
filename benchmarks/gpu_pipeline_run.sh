#!/usr/bin/env bash
# The GPU run behind benchmarks/RESULTS.md "The pipeline at scale": both `steermoe run`s of
# configs/gpu-qwen3-30b-a3b.yaml (the second all Cached) under benchmarks/pipeline_bench.py, then the gpu-marked
# tests at reduced depth. Run from the repository root with the dependencies importable (on the device machine:
# the wheels of .ci/gpu-wheels.sh installed into $SITE); logs and JSON go to $OUT (default: ./gpu-out).
set -o pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
W=${WORK:-/tmp/gpu-scale}; mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 TQDM_MININTERVAL=15
export TORCH_EXTENSIONS_DIR=$W/ext STEERMOE_CACHE=$W/cache PREFECT_HOME=$W/prefect
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed, prefect, mlflow, great_expectations as gx; print(torch.__version__, transformers.__version__, deepspeed.__version__, prefect.__version__, mlflow.__version__, gx.__version__)" 2>&1 | grep -v WARNING | tee -a "$OUT/gpu.txt"
timeout -k 10 "${BENCH_TIMEOUT:-420}" python3 benchmarks/pipeline_bench.py --config configs/gpu-qwen3-30b-a3b.yaml \
  --set cache_dir=$W/cache --set output_dir=$W/runs --set "prompts.sources=[{path: $W/prompts/padded-64.jsonl}]" \
  --tokens 64 --train 1024 --eval 128 --runs 2 --json "$OUT/pipeline.json" > "$OUT/bench.log" 2>&1
echo "bench exit $?"
grep -v "it/s\]\|s/it\]" "$OUT/bench.log" | grep -v "INFO\|^\s*$" | tail -n 60
timeout -k 10 "${TEST_TIMEOUT:-150}" python3 -m pytest -q -m gpu -x -p no:cacheprovider tests/test_random_pipeline.py > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests exit $?"; tail -n 15 "$OUT/gpu-tests.log"
