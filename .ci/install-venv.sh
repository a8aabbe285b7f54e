#!/usr/bin/env bash
# Create (once) and fill the project venv with steermoe and the given extras, using uv where it installs.
#
#   .ci/install-venv.sh VENV [EXTRAS]      (EXTRAS: comma list, e.g. dev or dev,ray; default dev)
#
# uv installs the ~200 packages in seconds where pip takes minutes (a cold `make demo` spent most of its
# install there). uv does not read pip's configuration, so the pip settings that decide WHICH torch comes
# are handed over: pip's find-links (where a machine keeps its CPU torch wheel) go to uv as --find-links,
# which uv searches before the index. A torch that already imports (a CUDA build on a GPU box) is kept:
# the requirement is a range, and uv leaves an installed package that satisfies it alone.
# Where uv cannot be installed, pip does everything as before.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:?usage: install-venv.sh VENV [EXTRAS]}"
EXTRAS="${2:-dev}"
PY="$VENV/bin/python"
TORCH_VERSION="${STEERMOE_TORCH_VERSION:-2.13.0}"

[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"

if [ -x "$VENV/bin/uv" ] || "$PY" -m pip install -q uv; then
  links=()
  for link in ${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null || true); do
    links+=(--find-links "$link")
  done
  uv=("$VENV/bin/uv" pip install -q --python "$PY")
  "$PY" -c "import torch" 2>/dev/null || "${uv[@]}" "${links[@]}" "torch==$TORCH_VERSION"
  "${uv[@]}" "${links[@]}" -e ".[$EXTRAS]"
else
  echo "install-venv: uv unavailable, installing with pip (slower)" >&2
  "$PY" -m pip install -q --upgrade pip
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==$TORCH_VERSION"
  "$PY" -m pip install -q -e ".[$EXTRAS]"
fi
