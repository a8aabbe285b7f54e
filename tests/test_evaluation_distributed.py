"""Evaluation through Ray workers (2 workers, tiny demo model): the same responses, losses, drift and
metrics as in one process, for a plain and a steered model."""

from __future__ import annotations

import pandas as pd
import pytest

from steermoe.config import ExecutionConfig
from steermoe.evaluation.benchmark_scores import ScoreOptions
from steermoe.evaluation.comparison import ModelEntry, compare_models
from steermoe.evaluation.distributed import batch_aligned_shards, ray_model_opener
from steermoe.generation import GenerationSettings
from steermoe.selection import ExpertSelection
from tests.ray_fixtures import ray_local  # noqa: F401 (fixture)

OPTS = dict(
    generation=GenerationSettings(max_new_tokens=8, batch_size=4, chat_template_kwargs={"enable_thinking": False}), scoring=ScoreOptions(samples=50, seed=0),
    progress=False,
)


def test_shards_are_whole_batches_whatever_the_shard_size():
    assert batch_aligned_shards(10, 6, 4) == [(0, 8), (8, 10)]
    assert batch_aligned_shards(8, 8, 4) == [(0, 8)]
    assert batch_aligned_shards(3, 1, 4) == [(0, 3)]


@pytest.fixture(scope="module")
def entries(tiny_demo_model):
    from steermoe.modeling import load_model, load_tokenizer

    path = str(tiny_demo_model)

    def base():
        return load_model(path, device="cpu"), load_tokenizer(path)

    return {"base": base, "steered": ModelEntry(load=base, steering=ExpertSelection([(0, 1), (1, 2)], [1.0, 0.5], "test"))}


@pytest.mark.usefixtures("ray_local")
def test_ray_evaluation_gives_the_same_responses_and_metrics(entries, tmp_path):
    from steermoe.demo import load_demo_prompts

    demo = load_demo_prompts()
    prompts = pd.concat([demo[demo["label"] == "safe"].head(10), demo[demo["label"] == "unsafe"].head(8)], ignore_index=True)
    local = compare_models(entries, prompts, ["string_match"], tmp_path / "local", **OPTS)
    with ray_model_opener(ExecutionConfig(executor="ray", num_workers=2, evaluation_shard_prompts=6)) as open_model:
        spread = compare_models(entries, prompts, ["string_match"], tmp_path / "ray", open_model=open_model, **OPTS)

    for name in entries:
        want, got = local.results[name], spread.results[name]
        pd.testing.assert_frame_equal(got.responses, want.responses)
        assert {k: v.to_dict() for k, v in got.metrics.items()} == {k: v.to_dict() for k, v in want.metrics.items()}
        assert got.drift_per_layer == want.drift_per_layer
    steered = spread.results["steered"].metrics
    assert steered["routing_drift"].value > 0 and "utility_loss" in steered  # the workers steered the model
    pd.testing.assert_frame_equal(spread.table, local.table)
