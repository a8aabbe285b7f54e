"""Concurrent runs and bad deployment parameters on the local stack, really run: ONE `steermoe stack up`
for the module (PostgreSQL, the Prefect and MLflow servers on it, the process worker), and flow runs of
the registered deployments created through the Prefect API, as the UI creates them, executed by the
stack's worker.

- Concurrency: the smoke config twice and a variant of it (other experts) are submitted at once; the
  worker runs the three side by side on one cache directory and the stack's MLflow server. Every stage
  key is computed exactly once (the audit trail of :mod:`tasks.locking`), the two runs of one config
  get the same registered version, the variant its own, the shared routing store verifies.
- Bad parameters: each deployment given a broken parameter fails its flow run with one actionable line
  in the state message and the logs (no traceback); nothing is registered in MLflow and nothing
  half-written is left in the run's cache. A mistyped parameter is refused by the API, naming the key.
  A run whose evaluation fails half-way (its judge unreachable) leaves no record a later run would reuse.

All ten flow runs are submitted together (the worker runs them side by side); the smoke config on the
tiny demo model keeps the module at two to three and a half minutes on two loaded cores.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest

from steermoe.stack import StackLayout
from tests.concurrency_checks import assert_each_key_computed_once_and_every_result_intact
from tests.stack_fixtures import cli, free_ports, needs_postgres, rest, stack_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), needs_postgres]

SMOKE = "configs/smoke.yaml"
MODEL = "steermoe-concurrent"
BAD_MODEL = "steermoe-bad-parameters"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack-resilience")
    folder = base / "stack"
    ports = dict(zip(("postgres", "prefect", "mlflow"), free_ports(3)))
    env = {"STEERMOE_CACHE": str(base / "cache"), "STEERMOE_STACK_DIR": str(folder), "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    done = cli("stack", "up", "--dir", str(folder), *(f"--{n}-port={p}" for n, p in ports.items()), "--config", SMOKE, "--timeout", "180", env=env, timeout=600)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        urls = StackLayout.at(folder).read_state()["urls"]
        deployments = {d["name"]: d["id"] for d in rest(f"{urls['prefect_api']}/deployments/filter", {})}
        yield SimpleNamespace(folder=folder, env=env, urls=urls, deployments=deployments, root=base)
    finally:
        if stack_processes(folder):
            cli("stack", "down", "--dir", str(folder), env=env)
        cli("stack", "down", "--dir", str(folder), "--delete-data", env=env)
        assert stack_processes(folder) == []


def smoke_overrides(model: Path, cache: Path, *extra: str, registered_model: str = MODEL) -> list[str]:
    """The smoke config on the tiny demo model, a few steps of everything, results under ``cache``."""
    return [
        f"model.source={model}", f"cache_dir={cache}", f"output_dir={cache / 'runs'}", "generation.max_new_tokens=4",
        "selection.top_k=2", "finetune.max_steps=3", "finetune.warmup_steps=0", "finetune.answer_max_new_tokens=4",
        "evaluation.max_new_tokens=4", f"tracking.registered_model={registered_model}", *extra,
    ]


def submit(stack, deployment: str, parameters: dict, name: str) -> str:
    """A flow run of a registered deployment, as the UI's "Run" button makes it; the worker picks it up."""
    api = stack.urls["prefect_api"]
    run = rest(f"{api}/deployments/{stack.deployments[deployment]}/create_flow_run", {"name": name, "parameters": parameters, "state": {"type": "SCHEDULED"}})
    return run["id"]


def wait_final(stack, run_ids: list[str], timeout: float = 600) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = {r["id"]: r for r in rest(f"{stack.urls['prefect_api']}/flow_runs/filter", {"flow_runs": {"id": {"any_": run_ids}}})}
        if all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs.values()) and len(runs) == len(run_ids):
            return runs
        if time.monotonic() > deadline:
            pytest.fail("flow runs not finished within the time limit: " + ", ".join(f"{r['name']}={r['state']['type']}" for r in runs.values()))
        time.sleep(1)


def log_text(stack, run_id: str, expect: str, timeout: float = 30) -> str:
    """A run's log lines, waiting for ``expect`` (a run's last logs arrive just after its state)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = rest(f"{stack.urls['prefect_api']}/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        text = "\n".join(entry["message"] for entry in logs)
        if expect in text or time.monotonic() > deadline:
            return text
        time.sleep(1)


def model_versions(stack, model: str) -> list[dict]:
    found = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/model-versions/search?" + urllib.parse.urlencode({"filter": f"name='{model}'"}))
    return found.get("model_versions", [])


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


# ---------------------------------------------------------------- bad parameters and concurrency, submitted together


def unreachable_judge(shared: Path, model: Path) -> dict:
    """Config X with the LLM judge at a closed port: every stage up to evaluation is X's (reused from the
    shared cache), evaluation fails half-way, after it took its lock and wrote some responses."""
    port = free_ports(1)[0]
    judge = ["evaluation.judges=[string_match, llm]", f"evaluation.llm_judge_url=http://127.0.0.1:{port}/v1", "evaluation.llm_judge_model=judge"]
    return {"config_path": SMOKE, "overrides": smoke_overrides(model, shared, *judge)}


def bad_parameter_cases(stack, model: Path):
    """(deployment, parameters a UI user could send, what the one line must say, the run's cache)."""
    def cache(name: str) -> Path:
        return stack.root / "bad" / name

    no_config = stack.root / "inputs" / "model-without-config"
    no_config.mkdir(parents=True, exist_ok=True)
    (no_config / "model.safetensors").write_bytes(b"\0" * 64)
    wrong = stack.root / "inputs" / "prompts.csv"
    wrong.write_text("question,answer\nhi,there\n")
    over = lambda name, *extra: smoke_overrides(model, cache(name), *extra, registered_model=BAD_MODEL)  # noqa: E731
    return [
        ("safety-pipeline", {"config_path": str(stack.root / "gone.yaml"), "overrides": over("gone")}, r"gone.yaml: no such config file", cache("gone")),
        ("safety-pipeline", {"config_path": SMOKE, "overrides": over("lr", "finetune.learning_rate=-1")}, "finetune.learning_rate: Input should be greater than 0", cache("lr")),
        ("safety-pipeline", {"config_path": SMOKE, "overrides": over("model", f"model.source={no_config}")}, "config.json", cache("model")),
        # Passes config resolution, fails in the first stage (which leaves only Prefect's record of the failure).
        ("safety-pipeline", {"config_path": SMOKE, "overrides": over("prompts", f"prompts.sources=[{{path: {wrong}}}]")}, "prompts.csv", cache("prompts")),
        ("retrain-if-prompts-changed", {"config_path": SMOKE, "overrides": over("retrain", "finetune.epochs")}, "override 'finetune.epochs': expected key.path=value", cache("retrain")),
        ("promote", {"candidate": "challenger", "config_path": SMOKE, "overrides": over("promote", "tracking.promotion_confidence=2")}, "tracking.promotion_confidence", cache("promote")),
    ]


@pytest.fixture(scope="module")
def submitted(stack, tiny_demo_model):
    """Everything the module checks, submitted at once so the worker runs it side by side: config X twice,
    config Y (a third expert) once, and every bad-parameter case."""
    cache = stack.root / "shared"
    x = {"config_path": SMOKE, "overrides": smoke_overrides(tiny_demo_model, cache)}
    y = {"config_path": SMOKE, "overrides": smoke_overrides(tiny_demo_model, cache, "selection.top_k=3")}
    good = {submit(stack, "safety-pipeline", p, name): name for p, name in ((x, "x-1"), (x, "x-2"), (y, "y"))}
    judge = submit(stack, "safety-pipeline", unreachable_judge(cache, tiny_demo_model), "judge-unreachable")
    bad = {submit(stack, deployment, params, f"bad-{i}"): (deployment, params, expect, where) for i, (deployment, params, expect, where) in enumerate(bad_parameter_cases(stack, tiny_demo_model))}
    start = time.monotonic()
    runs = wait_final(stack, [*good, judge, *bad])
    print(f"{len(runs)} flow runs finished on the stack's worker in {time.monotonic() - start:.0f} s")
    return SimpleNamespace(cache=cache, runs=runs, good=good, bad=bad, judge=judge)


def test_two_configs_and_one_config_twice_at_once_share_the_work_and_keep_their_results_apart(stack, submitted):
    for run_id, name in submitted.good.items():
        run = submitted.runs[run_id]
        assert run["state"]["type"] == "COMPLETED", f"{name}: {run['state']['message']}\n" + log_text(stack, run_id, "")[-3000:]
        assert run["work_pool_name"] == "steermoe-process"
    assert_each_key_computed_once_and_every_result_intact(submitted.cache)
    # The stack's MLflow: one version per candidate, and every pipeline run points at the one of its config.
    versions = model_versions(stack, MODEL)
    assert sorted(int(v["version"]) for v in versions) == [1, 2]
    experiment = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=steermoe")["experiment"]
    found = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.`steermoe.kind` = 'pipeline' and attributes.status = 'FINISHED'"})
    by_top_k: dict[str, list[str]] = {}
    for run in found["runs"]:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        if params.get("tracking.registered_model") == MODEL:
            by_top_k.setdefault(params["selection.top_k"], []).append(tags["registered_version"])
    assert len(by_top_k["2"]) == 2 and len(set(by_top_k["2"])) == 1 and by_top_k["3"] != by_top_k["2"][:1], by_top_k


def test_bad_deployment_parameters_fail_the_flow_run_with_one_line_and_leave_nothing_behind(stack, submitted):
    import re

    for run_id, (deployment, _, expect, cache) in submitted.bad.items():
        run = submitted.runs[run_id]
        where = f"{deployment} ({expect})"
        assert run["state"]["type"] == "FAILED", (where, run["state"])
        message = run["state"]["message"] or ""
        assert re.search(re.escape(expect), message) and "\n" not in message.strip(), (where, message)
        logs = log_text(stack, run_id, expect)
        assert expect in logs and "Traceback" not in logs, (where, logs[-3000:])
        print(f"{where}: {message}")
        # Nothing half-written: a stage that failed left no folder; what is there belongs to stages that finished.
        finished = {p.name.split("-")[0] for p in (cache / "locks").glob("*.done.json")} if (cache / "locks").exists() else set()
        stage_dirs = {p.name for p in (cache / "runs").glob("*/*") if p.is_dir()} if (cache / "runs").exists() else set()
        assert stage_dirs <= finished, (where, stage_dirs, finished)
    assert model_versions(stack, BAD_MODEL) == []
    # The cases that fail in their first line never touched their cache.
    for deployment, _, expect, cache in submitted.bad.values():
        if "config.json" not in expect and "prompts.csv" not in expect:
            assert files_under(cache) == set(), (deployment, files_under(cache))


@pytest.mark.parametrize(
    "parameters, key",
    [({"config_path": SMOKE, "overrides": "finetune.epochs=2"}, "overrides"), ({"config": {"finetune": {"learning_rate": "fast"}}}, "learning_rate")],
)
def test_the_api_refuses_a_mistyped_deployment_parameter_naming_it(stack, parameters, key):
    """The server checks parameters against the deployment's schema: no flow run is created at all."""
    before = len(rest(f"{stack.urls['prefect_api']}/flow_runs/filter", {}))
    with pytest.raises(urllib.error.HTTPError) as refused:
        submit(stack, "safety-pipeline", parameters, "mistyped")
    body = refused.value.read().decode()
    assert refused.value.code in (409, 422) and key in body, body
    assert len(rest(f"{stack.urls['prefect_api']}/flow_runs/filter", {})) == before


def test_a_stage_that_fails_half_way_leaves_no_result_a_later_run_would_reuse(stack, submitted):
    run = submitted.runs[submitted.judge]
    message = run["state"]["message"] or ""
    assert run["state"]["type"] == "FAILED" and "evaluation.llm_judge_url" in message and "unreachable" in message, run["state"]
    assert "\n" not in message.strip() and "Traceback" not in log_text(stack, submitted.judge, "unreachable")
    locks = submitted.cache / "locks"
    # The failed run reused X's stages (the concurrency test finds each computed once), held its own
    # evaluation's lock and wrote into its folder ...
    assert len(list(locks.glob("evaluate-*.lock"))) == 3
    evaluations = [p for p in (submitted.cache / "runs").glob("*/evaluate/*") if p.is_dir()]
    assert len(evaluations) == 3
    # ... but left no record: a later run computes that evaluation again instead of trusting the folder.
    assert len(list(locks.glob("evaluate-*.done.json"))) == 2
    assert sum((p / "comparison.json").exists() for p in evaluations) == 2
    # Its MLflow run says where it failed; it registered nothing (the concurrency test counts the versions).
    experiment = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=steermoe")["experiment"]
    found = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.failed_stage = 'evaluate'"})
    assert len(found.get("runs", [])) == 1
