#!/usr/bin/env bash
# Time a cold `make demo` the way a newcomer meets it: a fresh clone, a fresh venv and every cache empty
# (pip/uv, DeepSpeed's TORCH_EXTENSIONS_DIR, the steermoe cache with its demo model, Prefect's home,
# matplotlib's font cache), one phase at a time so the breakdown adds up to the whole:
#
#   bash benchmarks/cold_demo.sh [GIT_REF] [WORK_DIR]     (default: HEAD of this clone, a new /tmp folder)
#
# Phases: `make venv` (install), `steermoe demo-model` (the demo model: the package's build of the default
# recipe copied into the cache, steermoe.demo.shipped; with BUILD=1 trained from scratch instead, as a changed
# recipe would be), then `make demo` itself (every pipeline stage; its own table gives the seconds of each). Each line reports
# wall seconds, CPU seconds (user + sys, less sensitive to other load on a shared machine) and the load
# average when the phase started. Everything lives under WORK_DIR; delete it when done.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ref="${1:-HEAD}"
work="${2:-$(mktemp -d /tmp/steermoe-cold.XXXXXX)}"
mkdir -p "$work"
git clone -q "$here" "$work/src"
git -C "$work/src" checkout -q "$(git -C "$here" rev-parse "$ref")"

# A fresh HOME covers ~/.cache (steermoe, torch_extensions via the Makefile, matplotlib, huggingface) and
# ~/.prefect; the package caches get their own empty folders. pip's site config (/etc) still applies.
export HOME="$work/home" PIP_CACHE_DIR="$work/pip-cache" UV_CACHE_DIR="$work/uv-cache"
unset XDG_CACHE_HOME STEERMOE_CACHE PREFECT_HOME TORCH_EXTENSIONS_DIR MPLCONFIGDIR PREFECT_API_URL MLFLOW_TRACKING_URI
# A newcomer's Python writes bytecode: the first process compiles what it imports once and every later one (the
# stages after the demo model build, Prefect's temporary server, the fine-tuning baseline's process) reads it. A
# sandbox's PYTHONDONTWRITEBYTECODE=1 makes each of them compile torch, transformers, Prefect and MLflow again
# (measured: a fully cached `make demo` 30 s CPU without .pyc files, 21 s with them).
unset PYTHONDONTWRITEBYTECODE
mkdir -p "$HOME"
cd "$work/src"

report="$work/phases.txt"
phase() {  # phase NAME COMMAND...: run it, log its output, append "name wall cpu load" to the report
  local name="$1"; shift
  local load; load="$(cut -d' ' -f1-3 /proc/loadavg)"
  local t0; t0="$(date +%s.%N)"
  /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$@" > "$work/$name.log" 2>&1 || { tail -30 "$work/$name.log"; exit 1; }
  read -r wall user sys < "$work/$name.time"
  printf '%-12s wall %7.1f s   cpu %7.1f s   load at start %s\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" "$load" | tee -a "$report"
}
phase install make venv
if [ "${BUILD:-0}" = 1 ]; then phase demo-model .venv/bin/steermoe demo-model --no-shipped; else phase demo-model .venv/bin/steermoe demo-model; fi
phase stages make demo
awk '{w += $3; c += $6} END {printf "%-12s wall %7.1f s   cpu %7.1f s\n", "total", w, c}' "$report" | tee -a "$report"
sed -n "/steermoe run 'demo'/,/^outputs/p" "$work/stages.log"  # the run's own table: seconds per stage
echo "logs and timings: $work"
