#!/usr/bin/env bash
# The GPU runs behind benchmarks/RESULTS.md ("The pipeline at scale", "GPU: vLLM as the engine", Ray on one GPU), as
# steps of back-to-back device calls. The device tool runs a command for at most 10 minutes and keeps /tmp only
# while the machine stays warm (30 s after a call), so the full-depth pipeline run is started detached (setsid) by
# one call and collected by a later one, and the wheels travel one folder per call.
#
#   bash .gpu-run/benchmarks/gpu_session.sh STEP     # from the root of the device's copy of the repository
#
# Code: this script's repository copy (.gpu-run, carried); wheels: .whl-scale1/2 (.ci/gpu-wheels.sh), .vx1-.vx7
# (../shared/gpu/vllm-parts.sh), .gpu-raya/.gpu-rayb (the ray 2.60 wheel in two parts), .gpu-demo (the demo model).
# Steps, in order: scale1, run1, vx 1 .. vx 5, vx6, vx7, wait1, run2, tput, patched (+ ray when its parts came).
# A folder a call does not carry is gone from the device, so the calls that carry no .gpu-run (vx, vx6, vx7, wait1)
# run the copy run1 made: bash /tmp/gs/code/benchmarks/gpu_session.sh vx 1. Carry .gpu-raya with run2 and .gpu-rayb
# with tput to get Ray there (2 x ~38 MiB), .gpu-demo with patched.
# The vLLM + Ray session (2026-12-02, code landed, so the repository itself travels): vx 1 .. vx 5, vx6, vx7 (each
# carrying its .vxN), tput twice (TAG=a then TAG=b, one interleaved plain/routed pair each, carrying .gpu-raya then
# .gpu-rayb), final (the vLLM gpu tests, then ray; .gpu-demo rides with vx 5). From the repository root: bash benchmarks/gpu_session.sh vx 1
# Session 6 (2026-12-02): vx 1 .. vx 5, vx6, vx7, then TAG=a/b/c ROUNDS=5 MODES=stream,ours_stream tput (three
# interleaved pairs, one per call), then decoders (static decoder + HF generate, same lease).
# Session 7 (2026-12-02): vx 1 .. vx 5, vx6, then `vx7 && tests` in one call, then TAG=a/b TRACE=1 ROUNDS=6
# MODES=stream,ours_stream tput (two traced pairs: engine steps, GC pauses, clocks); pair C on a fresh machine:
# vx 1 .. vx 5, vx6, then `vx7 && TAG=c TRACE=1 ... TPUT_TIMEOUT=520 tput` in one call.
set -o pipefail
step=${1:?usage: gpu_session.sh STEP [N]}
ROOT=$(pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
S=/tmp/gs
mkdir -p "$S"
OUT=${OUT:-$S/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 TQDM_MININTERVAL=15
export TORCH_EXTENSIONS_DIR=$S/ext STEERMOE_CACHE=$S/cache PREFECT_HOME=$S/prefect VLLM_USE_FLASHINFER_SAMPLER=0
PIPE=(--config configs/gpu-qwen3-30b-a3b.yaml --set "cache_dir=$S/cache" --set "output_dir=$S/runs"
      --set "prompts.sources=[{path: $S/prompts/padded-64.jsonl}]" --tokens 64 --train 1024 --eval 128 --runs 1)

site() { python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$@"; }
quiet() { grep -av 'it/s\]\|s/it\]\|prompt/s\]\|step/s\]\| INFO \|^\s*$\|EventsWorker\|prefect.events' "$@"; }
run1_status() {
  [ -f "$S/run1.out" ] || return 0  # no pipeline run on this machine
  if [ -f "$S/run1.rc" ]; then echo "run1 finished: exit $(cat "$S/run1.rc")"; else echo "run1 running"; fi
  [ -f "$S/run1.log" ] && quiet "$S/run1.log" | grep -a "Finished in state\|failed\|Error\|error" | tail -n 4
}

demo() {  # a carried .gpu-demo (the demo model's cache folder) into this machine's /tmp
  [ -d "$ROOT/.gpu-demo/demo-models" ] && mkdir -p "$S/demo-cache" && cp -a "$ROOT/.gpu-demo/demo-models" "$S/demo-cache/" && echo "demo model copied"
  return 0
}

case "$step" in
  scale1)
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    site /tmp/site "$ROOT"/.whl-scale1/*.whl && echo "scale1 installed" ;;
  run1)
    site /tmp/site "$ROOT"/.whl-scale2/*.whl && echo "scale2 installed" || exit 1
    rm -rf "$S/code" && cp -a "$SRC" "$S/code"  # later calls replace .gpu-run; the detached run keeps its own copy
    PYTHONPATH=/tmp/site python3 -c "import deepspeed, prefect, mlflow, great_expectations; print('imports ok', deepspeed.__version__, prefect.__version__, mlflow.__version__)" 2>&1 | grep -v WARN
    rm -f "$S/run1.rc"
    setsid nohup bash "$S/code/benchmarks/gpu_session.sh" _run1 > "$S/run1.out" 2>&1 < /dev/null &
    sleep 25; run1_status; tail -c 400 "$S/run1.out" ;;
  _run1)  # detached: the first, full run (every stage computed)
    cd "$S/code" && PYTHONPATH=$S/code:/tmp/site timeout -k 20 1000 python3 benchmarks/pipeline_bench.py "${PIPE[@]}" \
      --json "$S/run1.json" > "$S/run1.log" 2>&1
    echo $? > "$S/run1.rc" ;;
  vx)  # one part of the vLLM wheel (calls 1-5 of vllm-parts.sh)
    [ "$2" = 1 ] && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    mkdir -p /tmp/vx && cp "$ROOT/.vx$2"/* /tmp/vx/ && echo "vx$2 copied" && run1_status
    demo ;;  # the demo model (16 MB) rides along with the smaller parts
  vx6)
    (cd /tmp/vx && cat part_* > vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl && rm part_*) && sha256sum -c "$ROOT/.vx6/sha" \
      && tar xf "$ROOT/.vx6/deps.tar" -C /tmp/vx && site /tmp/vsite /tmp/vx/*.whl && echo "vllm installed"; run1_status ;;
  vx7)
    site /tmp/vsite "$ROOT"/.vx7/*.whl && PYTHONPATH=/tmp/vsite timeout 120 python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -n 1
    run1_status ;;
  wait1)  # until the detached run is done (at most WAIT seconds), then its numbers
    while [ ! -f "$S/run1.rc" ] && [ "$SECONDS" -lt "${WAIT:-540}" ]; do sleep 3; done
    run1_status; cp "$S/run1.json" "$OUT/" 2>/dev/null; quiet "$S/run1.log" > "$OUT/run1.log"
    grep -a -A 14 "^run 1:" "$S/run1.log"; grep -a "^routing:\|^finetune_jobs:" "$S/run1.log" ;;
  run2)  # the second run (all Cached), the gpu tests at reduced depth, the fine-tuning peaks for an 80 GB card
    mkdir -p /tmp/raywhl && cp "$ROOT"/.gpu-raya/* /tmp/raywhl/ 2>/dev/null
    cd "$S/code" || exit 1
    PYTHONPATH=$S/code:/tmp/site timeout -k 10 200 python3 benchmarks/pipeline_bench.py "${PIPE[@]}" --keep-prompts \
      --json "$OUT/run2.json" > "$S/run2.log" 2>&1; echo "run2 exit $?"; quiet "$S/run2.log" > "$OUT/run2.log"
    grep -a -A 14 "^run 1:" "$S/run2.log"
    PYTHONPATH=$S/code:/tmp/site timeout -k 10 230 python3 -m pytest -q -m gpu -x -p no:cacheprovider tests/test_random_pipeline.py \
      > "$OUT/gpu-tests.log" 2>&1; echo "gpu tests exit $?"; tail -n 4 "$OUT/gpu-tests.log"
    PYTHONPATH=$S/code:/tmp/site timeout -k 10 150 python3 benchmarks/finetune_bench.py --mode selective --layers 48 --experts 50 \
      --batch 8 --seq 256 --steps 2 --warmup 1 --sweep 8x256:gc,4x256,4x512,4x512:gc --out "$OUT/finetune_sweep.json" \
      > "$OUT/finetune_sweep.log" 2>&1; echo "finetune sweep exit $?"; cat "$OUT/finetune_sweep.md" 2>/dev/null || tail -n 20 "$OUT/finetune_sweep.log" ;;
  tput)  # routing collection through our vLLM backend vs vLLM's plain generation: one interleaved pair per call
    # (ORDER=plain,routed; a second call right after makes the second pair, vLLM's compile cache warm); a carried
    # ray part (.gpu-raya or .gpu-rayb) is set aside for the `ray` step.
    mkdir -p /tmp/raywhl && cp "$ROOT"/.gpu-raya/* "$ROOT"/.gpu-rayb/* /tmp/raywhl/ 2>/dev/null; ls /tmp/raywhl 2>/dev/null | tr '\n' ' '
    # TRACE=1: every engine step timed (--trace), garbage collections of 20 ms or more in every process (driver and
    # engine core: benchmarks/trace_site) and the card's clocks and power every 200 ms, to find what stalls a batch.
    T=${TAG:-a}; trace=(); site_path=$SRC:/tmp/vsite
    if [ -n "${TRACE:-}" ]; then
      trace=(--trace); site_path=$SRC/benchmarks/trace_site:$site_path; export STEERMOE_GC_TRACE=$S/gc-$T
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv,noheader -lms 200 \
        > "$OUT/smi-$T.csv" 2>&1 & smi=$!
    fi
    cd "$SRC" && PYTHONPATH=$site_path timeout -k 10 "${TPUT_TIMEOUT:-570}" python3 benchmarks/vllm_bench.py all --sections throughput \
      --order "${ORDER:-plain,routed}" --rounds "${ROUNDS:-6}" --modes "${MODES:-sync,stream,ours_sync,ours_stream}" "${trace[@]}" \
      --out "$OUT/$T" --engine-timeout "${ENGINE_TIMEOUT:-290}" > "$OUT/tput-$T.log" 2>&1; echo "tput exit $?"
    rm -f "$OUT/$T/vllm_bench.json"
    if [ -n "${TRACE:-}" ]; then
      kill "$smi" 2>/dev/null; cat "$S/gc-$T"/gc-*.txt 2>/dev/null | sort > "$OUT/gc-$T.txt"
      echo "gc pauses >= 20 ms: $(wc -l < "$OUT/gc-$T.txt"), longest: $(sort -k4 -n -r "$OUT/gc-$T.txt" | head -n 3 | tr '\n' ';')"
    fi
    grep -a "engine up\|^\[.*\] \(plain\|routed\) [0-9]\|^|\|^engine\|pair" "$OUT/tput-$T.log" | cut -c 1-700 ;;
  decoders)  # our static decoder and HF generate with capture at the throughput shape (the side-by-side table)
    cd "$SRC" && PYTHONPATH=$SRC:/tmp/vsite timeout -k 10 "${DEC_TIMEOUT:-570}" python3 benchmarks/vllm_bench.py all --sections decoders \
      --out "$OUT/d" --engine-timeout 280 --hf-batches "${HF_BATCHES:-2}" > "$OUT/decoders.log" 2>&1; echo "decoders exit $?"
    grep -a "decoders\|Error\|error" "$OUT/decoders.log" | cut -c 1-500 ;;
  tests)  # the gpu tests of the vLLM backend with the landed code
    cd "$SRC" || exit 1
    PYTHONPATH=$SRC:/tmp/vsite timeout -k 10 "${TEST_TIMEOUT:-240}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_vllm_gpu.py \
      > "$OUT/vllm-tests.log" 2>&1; echo "vllm gpu tests exit $?"; grep -a "passed\|failed\|assert\|Error" "$OUT/vllm-tests.log" | tail -n 8 | cut -c 1-400 ;;
  final)  # the gpu tests, then one Ray GPU worker vs in-process
    bash "$SRC/benchmarks/gpu_session.sh" tests; cd "$ROOT" && bash "$SRC/benchmarks/gpu_session.sh" ray ;;
  patched)  # the gpu tests of the vLLM backend (patched evaluation bar 0.3), the fp32 patched evaluation, then Ray
    cd "$SRC" || exit 1
    PYTHONPATH=$SRC:/tmp/vsite timeout -k 10 220 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_vllm_gpu.py \
      > "$OUT/vllm-tests.log" 2>&1; echo "vllm gpu tests exit $?"; grep -a "passed\|failed\|assert" "$OUT/vllm-tests.log" | tail -n 6
    PYTHONPATH=$SRC:/tmp/vsite timeout -k 10 200 python3 benchmarks/vllm_bench.py patched --patched-dtypes float32 --out "$OUT/p" \
      --json "$OUT/patched.json" > "$OUT/patched.log" 2>&1; echo "patched fp32 exit $?"; grep -a "patched evaluation" "$OUT/patched.log" | cut -c 1-600
    [ -f /tmp/raywhl/part_aa ] && [ -f /tmp/raywhl/part_ab ] && cd "$ROOT" && bash "$SRC/benchmarks/gpu_session.sh" ray ;;
  ray)  # one Ray GPU worker vs the in-process path (ray's jsonschema and steermoe's pydantic come from /tmp/vsite)
    (cd /tmp/raywhl && cat part_aa part_ab > ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl) && (cd /tmp/raywhl && sha256sum -c sha) \
      && site /tmp/raysite /tmp/raywhl/ray-2.60.0-*.whl && echo "ray installed" || exit 1
    demo; ls "$S/demo-cache/demo-models" || exit 1
    cd "$SRC" && STEERMOE_CACHE=$S/demo-cache PYTHONPATH=$SRC:/tmp/raysite:/tmp/site:/tmp/vsite timeout -k 10 "${RAY_TIMEOUT:-200}" python3 \
      benchmarks/ray_bench.py --device cuda --workers 1 --prompts 512 --batch 64 --shard 64 --out "$OUT/ray.json" > "$OUT/ray.log" 2>&1
    echo "ray bench exit $?"; tail -n 12 "$OUT/ray.log" | cut -c 1-300 ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
