"""The Prefect flows end to end on the tiny demo model: real Prefect (temporary API), real MLflow (SQLite),
real DeepSpeed. One pipeline world per module; the tests run in order and build on each other's runs."""

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
from prefect.testing.utilities import prefect_test_harness

from steermoe import stages, tracking
from steermoe.config import load_config
from steermoe.errors import ValidationFailed
from tests.conftest import make_prompts

pytestmark = pytest.mark.slow

STAGES = list(stages.STAGES)
MODEL = "steermoe-test"


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=60):
        yield


def write_prompts(path, change_one=False, bad_label=False):
    rows = make_prompts(n_safe=8, n_unsafe=8)
    for i, row in enumerate(rows):
        row["split"] = "eval" if i % 4 == 0 else "train"
    if change_one:
        rows[3]["prompt"] = "How do I bake a sourdough loaf with rye?"
    if bad_label:
        rows[5]["label"] = "dunno"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_demo_model, prefect_api):
    root = tmp_path_factory.mktemp("flows")
    base = [
        f"model.source={tiny_demo_model}",
        "model.device=cpu",
        f"cache_dir={root / 'cache'}",
        f"output_dir={root / 'runs'}",
        "prompts.validation.min_per_label=5",
        "generation.max_new_tokens=6",
        "selection.threshold=-1",  # the tiny model's risk differences are small: take the top experts
        "selection.top_k=2",
        "finetune.max_steps=3",
        "finetune.batch_size=4",
        "finetune.learning_rate=0.05",
        "finetune.warmup_steps=0",
        "finetune.baselines=[]",
        "finetune.answer_max_new_tokens=6",
        "finetune.device=cpu",
        "evaluation.max_new_tokens=6",
        "evaluation.bootstrap_samples=10",
        "evaluation.steering=false",
        f"tracking.registered_model={MODEL}",
    ]

    def config(*extra, prompts=None):
        path = prompts or root / "prompts.jsonl"
        return load_config(None, base + [f"prompts.sources=[{{path: {path}}}]", *extra])

    write_prompts(root / "prompts.jsonl")
    return SimpleNamespace(root=root, config=config)


@pytest.fixture(scope="module")
def first_run(world):
    from flows.pipeline import safety_pipeline

    return safety_pipeline(config=world.config())


def uri_of(world):
    cfg = world.config()
    return tracking.resolve_tracking_uri(cfg.tracking, cfg.cache_dir)


def test_first_run_runs_every_stage_and_registers_a_challenger(world, first_run):
    assert first_run["states"] == {s: "Completed" for s in STAGES}
    reg = first_run["registered"]
    challenger = tracking.get_version(uri_of(world), MODEL, "challenger")
    assert challenger["version"] == reg["version"]
    prompts = first_run["records"]["validate_prompts"]
    assert challenger["tags"]["prompts.fingerprint"] == prompts["fingerprint"]
    assert json.loads(challenger["tags"]["selection.experts"]) == first_run["records"]["select_experts"]["experts"]
    assert "refusal_rate" in challenger["metrics"] and "base.refusal_rate" in challenger["metrics"] and "refusal_rate.ci_low" in challenger["metrics"]
    # Lineage: from the version to the pipeline run, the risk table, the selection and the routing store.
    tags = challenger["tags"]
    assert tags["lineage.pipeline_run_id"] == first_run["tracking"]["run_id"]
    assert tags["lineage.risk_difference"].endswith("/risk_table.parquet") and tags["lineage.select_experts"].endswith("/selection.json")
    assert tags["lineage.routing_store"] == first_run["records"]["collect_routing"]["store_path"]
    assert tags["base.kind"] == "mlflow" and tags["base.reference"].startswith("runs:/")


def test_mlflow_has_a_parent_run_with_one_nested_run_per_stage(world, first_run):
    from mlflow import MlflowClient

    client = MlflowClient(uri_of(world))
    run = first_run["tracking"]
    parent = client.get_run(run["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["finetune.max_steps"] == "3"
    assert parent.data.tags["prompts.fingerprint"] == first_run["records"]["validate_prompts"]["fingerprint"]
    children = client.search_runs([run["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{run['run_id']}'")
    by_stage = {c.data.tags["steermoe.stage"]: c for c in children}
    assert set(STAGES) <= set(by_stage)
    risk = {a.path for a in client.list_artifacts(by_stage["risk_difference"].info.run_id)}
    assert {"risk_table.parquet", "risk_table.csv", "risk_heatmap.png"} <= risk
    assert "validation_report.json" in {a.path for a in client.list_artifacts(by_stage["validate_prompts"].info.run_id)}
    assert json.loads(by_stage["select_experts"].data.tags["experts"]) == first_run["records"]["select_experts"]["experts"]
    curve = client.get_metric_history(by_stage["finetune"].info.run_id, "train.loss")
    assert len(curve) == 3 and [p.step for p in curve] == [1, 2, 3]


def test_the_run_publishes_its_tables_as_prefect_artifacts(world, first_run):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        latest = {a.key: a for a in client.read_latest_artifacts()}
    assert {"validation-report", "risk-table", "expert-selection", "comparison"} <= set(latest)
    assert latest["risk-table"].type == "table" and "risk_diff" in str(latest["risk-table"].data)
    risk_rows = latest["risk-table"].data
    risk_rows = json.loads(risk_rows) if isinstance(risk_rows, str) else risk_rows
    assert [r["risk_diff"] for r in risk_rows] == sorted((r["risk_diff"] for r in risk_rows), reverse=True)
    assert latest["risk-table"].description.startswith("Top 50 experts by risk difference")
    assert "L" in str(latest["expert-selection"].data) and "finetuned" in str(latest["comparison"].data)


def test_rerun_with_nothing_changed_is_all_cached(world, first_run):
    from flows.pipeline import safety_pipeline

    again = safety_pipeline(config=world.config())
    assert again["states"] == {s: "Cached" for s in STAGES}
    assert again["registered"]["version"] == first_run["registered"]["version"]  # no duplicate version


def test_registered_version_loads_by_alias_and_reproduces_the_evaluated_outputs(world, first_run):
    model = tracking.load_registered(uri_of(world), f"models:/{MODEL}@challenger")
    prompts_path = first_run["records"]["validate_prompts"]["prompts_path"]
    eval_prompts = stages.read_prompt_snapshot(prompts_path, "eval")
    got = model.predict(eval_prompts[["prompt"]])
    evaluated = pd.read_json(first_run["records"]["evaluate"]["outputs_path"], lines=True)
    assert list(evaluated["id"].astype(str)) == list(eval_prompts["id"])
    assert list(got["response"]) == list(evaluated["response"])


def test_changing_only_evaluation_settings_reruns_only_evaluation(world, first_run):
    """Here evaluation also moves onto Ray workers (a local Ray the stage starts): the executor is in no
    cache key, and the workers give the same answers as the first, in-process run."""
    from flows.pipeline import safety_pipeline
    from steermoe.execution import ray_available

    on_ray = ["execution.executor=ray", "execution.num_workers=2", "execution.stages=[evaluation]"] if ray_available() else []
    out = safety_pipeline(config=world.config("evaluation.bootstrap_samples=5", *on_ray))
    upstream = STAGES[: STAGES.index("evaluate")]
    assert {s: out["states"][s] for s in upstream} == {s: "Cached" for s in upstream}
    assert out["states"]["evaluate"] == "Completed"
    first, now = (pd.read_json(r["records"]["evaluate"]["outputs_path"], lines=True) for r in (first_run, out))
    pd.testing.assert_frame_equal(now[["id", "response", "refused"]], first[["id", "response", "refused"]])
    # New numbers make a new candidate, so registration runs too.
    assert out["states"]["register"] == "Completed"
    assert int(out["registered"]["version"]) == int(first_run["registered"]["version"]) + 1


def test_a_deleted_output_is_rebuilt_and_its_consumers_stay_cached(world, first_run):
    from flows.pipeline import safety_pipeline

    shutil.rmtree(first_run["records"]["risk_difference"]["table_path"].rsplit("/", 1)[0])
    out = safety_pipeline(config=world.config())
    assert out["states"]["risk_difference"] == "Completed"
    assert out["states"]["select_experts"] == "Cached"  # same content key: the selection did not change
    assert out["records"]["risk_difference"]["table_path"] == first_run["records"]["risk_difference"]["table_path"]


def test_promotion_is_head_to_head_and_recorded_either_way(world, first_run):
    from flows.promotion import promote

    uri = uri_of(world)
    version = first_run["registered"]["version"]
    refused = promote(candidate=version, config=world.config("tracking.promotion_margin=1.0"))
    assert refused["promoted"] is False
    assert any(r.startswith("FAIL: refusal") for r in refused["decision"]["reasons"])
    assert refused["decision"]["reference"] == "base"  # no champion yet: the challenger meets its base
    # Same evaluation set as the pipeline's: both sides' per-prompt results come from the registration.
    assert refused["decision"]["sources"] == {"challenger": "cached", "base": "cached"}
    assert refused["decision"]["eval_set"] == first_run["records"]["evaluate"]["eval_set"]["fingerprint"]
    assert tracking.get_version(uri, MODEL, "champion") is None
    assert tracking.get_version(uri, MODEL, version)["tags"]["promotion.decision"] == "refused"
    # An operator may still name a champion by hand (the MLflow UI allows it); the retrain checks build on it.
    tracking.set_alias(uri, MODEL, tracking.CHAMPION, version)


def test_retrain_is_skipped_when_the_prompts_did_not_change(world, first_run):
    from flows.retrain import retrain_if_prompts_changed

    out = retrain_if_prompts_changed(config=world.config())
    assert out["retrained"] is False
    assert out["check"]["fingerprint"] == first_run["records"]["validate_prompts"]["fingerprint"]


def test_retrain_runs_from_validation_on_when_one_prompt_changes(world, first_run):
    from flows.retrain import retrain_if_prompts_changed

    changed = write_prompts(world.root / "prompts-changed.jsonl", change_one=True)
    out = retrain_if_prompts_changed(config=world.config(prompts=changed), promote_after=True)
    assert out["retrained"] is True and out["check"]["reason"] == "prompt sets changed"
    states = out["pipeline"]["states"]
    assert states["prepare_model"] == "Cached"  # the model did not change
    assert all(states[s] == "Completed" for s in STAGES if s != "prepare_model")
    new_version = out["pipeline"]["registered"]["version"]
    assert "promotion" in out and out["promotion"]["version"] == new_version
    tags = tracking.get_version(uri_of(world), MODEL, new_version)["tags"]
    assert tags["prompts.fingerprint"] == out["check"]["fingerprint"] != first_run["records"]["validate_prompts"]["fingerprint"]
    assert tags["promotion.decision"] in ("promoted", "refused")


def test_bad_data_stops_the_flow_before_any_model_is_loaded(world, first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import safety_pipeline

    uri = uri_of(world)
    versions_before = len(tracking._client(uri).search_model_versions(f"name = '{MODEL}'"))
    bad = write_prompts(world.root / "prompts-bad.jsonl", bad_label=True)
    state = safety_pipeline(config=world.config(prompts=bad), return_state=True)
    assert state.is_failed()
    with pytest.raises(ValidationFailed, match="label_in_set"):
        state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
        report = client.read_latest_artifacts()
    assert names == ["finish-tracking", "start-tracking", "validate-prompts"]
    assert any(a.key == "validation-report" and "FAILED" in str(a.data) for a in report)
    reports = list((world.root / "runs").rglob("validation_report.json"))
    failed = [json.loads(p.read_text()) for p in reports if not json.loads(p.read_text())["success"]]
    assert failed and failed[0]["failures"][0]["rule"] == "label_in_set" and failed[0]["failures"][0]["id"] == "s5"
    assert len(tracking._client(uri).search_model_versions(f"name = '{MODEL}'")) == versions_before


def steermoe_cli(world, *args, temporary_api=True):
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    # A process of its own: Prefect's temporary API (a server start, ~15 s on two cores), or with
    # temporary_api=False this module's test server; the same result store (under the cache dir).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(world.root / "prefect-home")
    if not temporary_api:
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return subprocess.run([sys.executable, "-m", "steermoe", *args], capture_output=True, text=True, env=env, timeout=600)


def config_file(world, path, *extra, prompts=None):
    cfg = world.config(*extra, prompts=prompts)
    path.write_text(yaml_dump(cfg.model_dump(mode="json")))
    return path


def yaml_dump(data):
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def test_cli_run_reuses_every_stage_and_prints_the_summary(world, first_run):
    out = steermoe_cli(world, "run", "--config", str(config_file(world, world.root / "run.yaml")))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.strip("│ ").split(" ")[0] in STAGES]
    assert len(lines) == len(STAGES) and all("Cached" in line for line in lines), "\n".join(lines)
    assert f"models:/{MODEL}@challenger" in out.stdout and "mlflow ui --backend-store-uri sqlite:///" in out.stdout


def test_cli_run_on_bad_data_exits_1_with_one_line(world, first_run):
    bad = write_prompts(world.root / "prompts-bad-cli.jsonl", bad_label=True)
    # On the module's Prefect server: the temporary API's start-up is covered by the test above.
    out = steermoe_cli(world, "run", "--config", str(config_file(world, world.root / "bad.yaml", prompts=bad)), temporary_api=False)
    assert out.returncode == 1
    assert "validation FAILED" in out.stderr and "label_in_set" in out.stderr
    assert "Traceback" not in out.stderr.split("error:")[-1]


def test_retries_only_where_a_failure_can_be_transient():
    from tasks import registry
    from tasks import tracking as tracking_tasks
    from tasks.stages import STAGE_TASKS

    assert {n: t.retries for n, t in STAGE_TASKS.items() if n != "register"} == {n: 0 for n in STAGE_TASKS if n != "register"}
    assert STAGE_TASKS["register"].retries > 0
    assert all(t.retries > 0 for t in (tracking_tasks.start_tracking, tracking_tasks.track_stage, registry.promote_candidate))


def test_a_stage_key_covers_only_its_own_config_section(tmp_path):
    from tasks.caching import stage_key

    base, changed = load_config(None, []), load_config(None, ["evaluation.max_new_tokens=7"])
    upstream = {"prompts": {"key": "prompts:abc"}, "model": {"key": "model:def"}}
    for stage in ("collect_routing", "risk_difference", "select_experts", "finetune"):
        assert stage_key(stage, {"config": base, **upstream}) == stage_key(stage, {"config": changed, **upstream})
    assert stage_key("evaluate", {"config": base, **upstream}) != stage_key("evaluate", {"config": changed, **upstream})
    # Where outputs go and which MLflow run records them never change a key.
    assert stage_key("evaluate", {"config": base, "out_root": "a", "run": {"run_id": 1}}) == stage_key("evaluate", {"config": base, "out_root": "b"})
    assert stage_key("finetune", {"config": base, **upstream}) != stage_key("finetune", {"config": base, **upstream, "model": {"key": "model:xyz"}})
