# Two entry points for a fresh machine with Python 3.10+: `make demo` and `make test`.
# Both create .venv once (a stamp file tracks pyproject.toml) and are fast when nothing changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steermoe-installed
VLLM_STAMP := $(VENV)/.vllm-installed
RAY_STAMP := $(VENV)/.ray-installed
# Keep the DeepSpeed JIT build between runs.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/steermoe/torch_extensions
# Idle OpenMP threads sleep instead of spinning (same results; much faster on a shared CPU): see steermoe/cli/__init__.py.
export OMP_WAIT_POLICY ?= PASSIVE
# Python writes and reuses its bytecode caches (__pycache__) here even where the environment says not to
# (PYTHONDONTWRITEBYTECODE=1, as on CI images): uv installs no .pyc, so without this every process of the
# demo and of the suite (servers, workers, launched ranks, CLI runs) compiled torch, transformers, prefect
# and mlflow from source again: ~13.7 s of imports per process instead of ~8 s on a 2-core box.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv demo demo-ood test lint bench clean

# The demo's install: steermoe and its dev tools (uv installs; see .ci/install-venv.sh). The tests add Ray.
$(STAMP): pyproject.toml .ci/install-venv.sh
	PYTHON=$(PYTHON) bash .ci/install-venv.sh $(VENV) dev
	touch $(STAMP)

$(RAY_STAMP): $(STAMP)
	PYTHON=$(PYTHON) bash .ci/install-venv.sh $(VENV) dev,ray
	touch $(RAY_STAMP)

# vLLM (CPU build) is installed in a call of its own: see .ci/install-vllm.sh for why.
$(VLLM_STAMP): $(STAMP) .ci/install-vllm.sh
	bash .ci/install-vllm.sh $(VENV)
	touch $(VLLM_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steermoe run --config configs/demo.yaml

# After `make demo`: the base model and the demo run's two patches (its latest fine-tuning) on the free-wording
# `ood` split, one table with bootstrap intervals (README, "The free-wording split").
demo-ood: $(STAMP)
	@key=$$(ls -td runs/demo/finetune/*/selected/patch 2>/dev/null | head -1 | cut -d/ -f4); \
	if [ -z "$$key" ]; then echo "demo-ood: no fine-tuned patch under runs/demo/finetune/; run make demo first" >&2; exit 2; fi; \
	$(VENV)/bin/steermoe compare --config configs/demo.yaml --set evaluation.split=ood --out runs/demo/ood \
	  --patch expert-fine-tuned=runs/demo/finetune/$$key/selected/patch --patch random-experts=runs/demo/finetune/$$key/random/patch

test: $(RAY_STAMP) $(VLLM_STAMP)
	# The Prefect UI browser test drives Chromium with playwright-core (no browser download); it skips without them.
	if command -v npm >/dev/null; then (cd tests/ui && npm ci --silent --no-audit --no-fund); fi
	$(VENV)/bin/ruff check .
	# The 25 slowest tests end the log: where CI time goes, run after run.
	$(VENV)/bin/pytest -q --durations=25

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.analysis_bench --seed-tokens 1000
	OMP_NUM_THREADS=1 $(PY) benchmarks/routing_bench.py --device cpu --shape demo --threads 1

clean:
	rm -rf $(VENV) runs
