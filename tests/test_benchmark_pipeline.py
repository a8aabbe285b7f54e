"""The pipeline on the tiny demo model with a benchmark among its prompt sources and both baselines
(random experts, full fine-tuning): real Prefect (temporary API), MLflow (SQLite) and DeepSpeed."""

import json
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from steermoe import tracking
from steermoe.config import load_config
from tests.test_flows import write_prompts

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "fixtures" / "benchmarks"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_demo_model):
    from flows.pipeline import safety_pipeline

    root = tmp_path_factory.mktemp("bench-pipeline")
    prompts = write_prompts(root / "prompts.jsonl")
    sources = [{"path": str(prompts)}, {"benchmark": "xstest", "path": str(DATA / "xstest_prompts.csv")}]
    config = load_config(
        None,
        [
            f"model.source={tiny_demo_model}", "model.device=cpu", f"cache_dir={root / 'cache'}", f"output_dir={root / 'runs'}",
            f"prompts.sources={json.dumps(sources)}", "prompts.validation.min_per_label=5", "generation.max_new_tokens=4",
            "selection.threshold=-1", "selection.top_k=2", "finetune.max_steps=2", "finetune.batch_size=4", "finetune.warmup_steps=0",
            "finetune.baselines=[random, full]", "finetune.answer_max_new_tokens=4", "finetune.device=cpu", "finetune.heldout_fraction=0",
            "evaluation.max_new_tokens=4", "evaluation.bootstrap_samples=10", "evaluation.steering=false", "evaluation.routing_drift=false",
            "tracking.registered_model=steermoe-bench-test",
        ],
    )
    with prefect_test_harness(server_startup_timeout=60):
        result = safety_pipeline(config=config)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            artifacts = {a.key: a for a in client.read_latest_artifacts()}
    return config, result, artifacts


def test_comparison_rows_include_both_baselines_with_their_training_cost(run):
    _, result, _ = run
    evaluation = result["records"]["evaluate"]
    payload = json.loads(Path(evaluation["comparison_json_path"]).read_text())
    rows = {r["model"]: r for r in payload["table"]}
    assert list(rows) == ["base", "finetuned", "random", "full"]
    assert rows["base"]["trainable_params"] is None
    selective, random_, full = rows["finetuned"], rows["random"], rows["full"]
    assert selective["trainable_params"] == random_["trainable_params"] < full["trainable_params"]
    # AdamW keeps two fp32 moments per trained element (plus a step counter per tensor).
    assert 8 * full["trainable_params"] <= full["optimizer_state_bytes"] < 8 * full["trainable_params"] + 4096
    assert selective["optimizer_state_bytes"] < full["optimizer_state_bytes"] / 2
    assert all(r["step_seconds"] > 0 for r in (selective, random_, full))
    md = Path(evaluation["comparison_md_path"]).read_text()
    assert "trainable_params" in md and "optimizer_state_bytes" in md and "## xstest (5 prompts)" in md


def test_benchmark_metrics_reach_mlflow_and_a_prefect_artifact(run):
    from mlflow import MlflowClient

    config, result, artifacts = run
    uri = tracking.resolve_tracking_uri(config.tracking, config.cache_dir)
    metrics = MlflowClient(uri).get_run(result["tracking"]["run_id"]).data.metrics
    xstest = {"xstest/full_compliance_safe", "xstest/full_refusal_safe", "xstest/full_compliance_unsafe", "xstest/full_refusal_unsafe"}
    assert xstest <= set(metrics)  # the registered candidate's, under the benchmark's own names
    assert {f"{model}.{name}" for model in ("base", "finetuned", "random", "full") for name in xstest} <= set(metrics)
    assert metrics["xstest/full_refusal_safe"] == metrics["finetuned.xstest/full_refusal_safe"]
    assert metrics["xstest/full_compliance_safe"] + metrics["xstest/full_refusal_safe"] == pytest.approx(1.0)
    assert result["records"]["evaluate"]["benchmarks"] == ["xstest"]
    artifact = artifacts["benchmark-xstest"]
    assert artifact.type == "table" and "full_refusal_unsafe" in str(artifact.data) and "finetuned" in str(artifact.data)
