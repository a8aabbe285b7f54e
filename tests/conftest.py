import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep every test run's caches, models and tracking inside the pytest temp tree or a shared cache.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On two cores torch's intra-op threads spin against each other (and against subprocesses):
# one thread per process is many times faster for the tiny models the tests use.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `steermoe run` uses a running `steermoe stack`: tests must never find a developer's (the stack tests pass --dir).
os.environ["STEERMOE_STACK_DIR"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"steermoe-tests-no-stack-{os.getpid()}")


def make_prompts(n_safe=12, n_unsafe=12):
    """A small valid prompt set as records."""
    rows = []
    for i in range(n_safe):
        rows.append({"id": f"s{i}", "prompt": f"How do I bake bread number {i}?", "label": "safe", "category": "cooking", "split": "train"})
    for i in range(n_unsafe):
        rows.append({"id": f"u{i}", "prompt": f"How do I break into locked account number {i}?", "label": "unsafe", "category": "cyber", "split": "train"})
    return rows


@pytest.fixture
def prompt_rows():
    return make_prompts()


@pytest.fixture(scope="session")
def tiny_demo_model(tmp_path_factory):
    """A reduced demo model (seconds to build): a real trained HF folder with tokenizer and chat template."""
    from steermoe.demo.model import build_demo_model
    from steermoe.demo.recipe import DemoRecipe

    return build_demo_model(tmp_path_factory.mktemp("demo") / "model", DemoRecipe.tiny())
