"""The team path, really run: ONE `steermoe stack up` for the module (PostgreSQL as `postgres`, Prefect and
MLflow servers on it, a process worker, the three deployments), then what users do with it: start the
pipeline and `promote` from the Prefect UI in headless Chromium and watch the MLflow UI move the aliases,
let a schedule retrain when a prompt changes, use it from the CLI; finally `stack down` leaves no process.

The tests run in file order and share the stack; the last one stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from steermoe.stack import StackLayout
from tests.stack_fixtures import ROOT, cli, free_ports, needs_postgres, one_line_error, rest, stack_processes

UI_DIR = ROOT / "tests" / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SMOKE = "configs/smoke.yaml"
SCREENSHOTS = Path(os.environ.get("STEERMOE_UI_SCREENSHOTS", ROOT / "tests" / "ui" / "screenshots"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), needs_postgres]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack for the module, on free ports, its cache (demo model, stage results) in the temp tree.

    A stale pid file (a crashed `up`) is planted first: `up` must clear it and start normally.
    """
    base = tmp_path_factory.mktemp("stack")
    folder = base / "stack"
    ports = dict(zip(("postgres", "prefect", "mlflow"), free_ports(3)))
    env = {
        "STEERMOE_CACHE": str(base / "cache"),
        "STEERMOE_STACK_DIR": str(folder),
        # Fast loops for a test: the worker polls every 2 s, the scheduler plans every 5 s.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    }
    (folder / "run").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / "run" / "prefect.pid").write_text(f"{gone.pid}\n")
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    start = time.monotonic()
    done = cli("stack", "up", "--dir", str(folder), *args, "--timeout", "180", env=env, timeout=600)
    seconds = time.monotonic() - start
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        state = StackLayout.at(folder).read_state()
        yield SimpleNamespace(folder=folder, env=env, ports=ports, urls=state["urls"], up=done, up_seconds=seconds, cache=base / "cache")
    finally:
        if stack_processes(folder):
            cli("stack", "down", "--dir", str(folder), env=env)
        cli("stack", "down", "--dir", str(folder), "--delete-data", env=env)


def test_up_starts_every_service_healthy_clears_stale_pid_files_and_a_second_up_is_a_no_op(stack):
    out = stack.up.stdout
    assert "removed the stale pid file of prefect" in out
    for name in ("postgres", "prefect", "mlflow", "worker"):
        assert f"{name:<9} healthy after" in out, out
    assert "deployments registered: safety-pipeline, retrain-if-prompts-changed, promote" in out
    print(f"stack up took {stack.up_seconds:.1f} s (first start: initdb and migrations included)")

    status = cli("stack", "status", "--dir", str(stack.folder), env=stack.env)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" healthy │") == 4 and "unhealthy" not in status.stdout, status.stdout
    for url in (stack.urls["prefect"], stack.urls["mlflow"]):
        assert url in status.stdout

    logs = cli("stack", "logs", "postgres", "-n", "5", "--dir", str(stack.folder), env=stack.env)
    assert logs.returncode == 0 and "database system is ready to accept connections" in cli("stack", "logs", "--dir", str(stack.folder), env=stack.env).stdout
    assert "unknown service 'nope'" in one_line_error(cli("stack", "logs", "nope", "--dir", str(stack.folder), env=stack.env))

    again = cli("stack", "up", "--dir", str(stack.folder), env=stack.env)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    other = cli("stack", "up", "--dir", str(stack.folder), f"--mlflow-port={free_ports(1)[0]}", env=stack.env)
    assert "running with other settings (ports)" in one_line_error(other)

    deployments = rest(f"{stack.urls['prefect_api']}/deployments/filter", {})
    assert {d["name"] for d in deployments} == {"safety-pipeline", "retrain-if-prompts-changed", "promote"}
    assert {d["work_pool_name"] for d in deployments} == {"steermoe-process"}


def test_the_database_password_is_kept_in_a_private_file_and_never_shown(stack):
    layout = StackLayout.at(stack.folder)
    password = layout.password_file.read_text().strip()
    assert len(password) >= 24
    assert layout.password_file.stat().st_mode & 0o777 == 0o600 and layout.pgpass_file.stat().st_mode & 0o777 == 0o600
    shown = [stack.up.stdout, stack.up.stderr, layout.state_file.read_text()]
    shown += [p.read_text(errors="replace") for p in layout.logs.glob("*.log")]
    for pid in stack_processes(stack.folder):
        shown.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
    assert not [text for text in shown if password in text]
    # The data lives where the unprivileged server user owns it.
    data = layout.postgres_link.resolve() / "data"
    assert (data / "PG_VERSION").exists()
    if os.geteuid() == 0:
        assert data.owner() == "postgres"


def _flow_run(stack, url: str) -> dict:
    return rest(f"{stack.urls['prefect_api']}/flow_runs/{url.rstrip('/').rsplit('/', 1)[1]}")


def _log_text(stack, run: dict, expect: str | None = None, timeout: float = 30) -> str:
    """The run's log lines; with ``expect``, waits for that text (a run's last logs arrive just after its state)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = rest(f"{stack.urls['prefect_api']}/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
        text = "\n".join(entry["message"] for entry in logs)
        if expect is None or expect in text or time.monotonic() > deadline:
            return text
        time.sleep(1)


def _alias(stack, model: str, alias: str) -> str | None:
    try:
        found = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/registered-models/alias?name={model}&alias={alias}")
    except OSError:
        return None
    return found["model_version"]["version"]


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("node") and (UI_DIR / "node_modules" / "playwright-core").exists()),
    reason="needs chromium, node and `npm ci` in tests/ui",
)
def test_a_pipeline_run_started_in_the_prefect_ui_completes_and_promote_from_the_ui_makes_it_champion(stack):
    shots = SCREENSHOTS / "stack"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    done = subprocess.run(
        ["node", str(UI_DIR / "stack_ui_flow.mjs"), stack.urls["prefect"], stack.urls["mlflow"], "steermoe-smoke", SMOKE, str(shots)],
        capture_output=True, text=True, timeout=800, cwd=UI_DIR, env={**os.environ, "CHROMIUM": CHROMIUM, "RUN_TIMEOUT_MS": "360000"},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"screenshots: {shots}")
    assert "error" not in seen, seen
    pipeline = seen["steps"][0]
    run = _flow_run(stack, pipeline["flow_run_url"])
    # The UI saw the run Completed, and the worker of the stack is what ran it, with the smoke config.
    assert pipeline["state"] == "Completed", _log_text(stack, run)[-3000:]
    assert run["state_type"] == "COMPLETED" and run["work_pool_name"] == "steermoe-process"
    assert run["parameters"]["config_path"] == SMOKE
    # The MLflow UI lists the new version with the challenger alias; the registry agrees.
    challenger = _alias(stack, "steermoe-smoke", "challenger")
    assert challenger is not None
    row = next(v for v in pipeline["versions"] if v["version"] == challenger)
    assert "challenger" in row["aliases"] and "champion" not in row["aliases"], pipeline["versions"]

    promotion = seen["steps"][1]
    run = _flow_run(stack, promotion["flow_run_url"])
    assert promotion["state"] == "Completed", _log_text(stack, run)[-3000:]
    assert run["work_pool_name"] == "steermoe-process"
    assert _alias(stack, "steermoe-smoke", "champion") == challenger
    row = next(v for v in promotion["versions"] if v["version"] == challenger)
    assert {"challenger", "champion"} <= set(row["aliases"]), promotion["versions"]
    assert len(seen["screenshots"]) == 6 and all(Path(p).stat().st_size > 10_000 for p in seen["screenshots"])


def test_cli_promote_records_its_flow_run_and_decision_on_the_running_stack(stack):
    def cli_promote_runs():
        runs = rest(f"{stack.urls['prefect_api']}/flow_runs/filter", {"flows": {"name": {"any_": ["promote"]}}})
        return [r for r in runs if r["deployment_id"] is None]

    if _alias(stack, "steermoe-smoke", "challenger") is None:
        pytest.skip("needs the version the UI test registers")
    before = len(cli_promote_runs())
    done = cli("promote", "--config", SMOKE, env=stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "models:/steermoe-smoke@champion" in done.stdout
    assert len(cli_promote_runs()) == before + 1  # the flow ran against the stack's Prefect API, not a temporary one
    experiment = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=steermoe")["experiment"]
    found = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.`steermoe.kind` = 'promotion'"})
    assert len(found.get("runs", [])) == 2  # the UI's promote and this one: both decisions on the stack's MLflow


# ---------------------------------------------------------------- the schedule


def _runs_of(stack, deployment_id: str) -> list[dict]:
    return rest(f"{stack.urls['prefect_api']}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "START_TIME_ASC"})


def _completed_after(stack, deployment_id: str, after: datetime, timeout: float) -> dict:
    """The first run of the deployment that started after ``after`` and reached Completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in _runs_of(stack, deployment_id):
            started = run.get("start_time")
            if started and datetime.fromisoformat(started.replace("Z", "+00:00")) > after:
                if run["state_type"] == "COMPLETED":
                    return run
                assert run["state_type"] not in ("FAILED", "CRASHED"), f"scheduled run {run['name']} ended {run['state_name']}: " + _log_text(stack, run)[-3000:]
        time.sleep(2)
    pytest.fail(f"no scheduled run started after {after:%H:%M:%S} and completed within {timeout:g} s")


def _versions(stack, model: str) -> list[dict]:
    found = rest(f"{stack.urls['mlflow']}/api/2.0/mlflow/model-versions/search?" + urllib.parse.urlencode({"filter": f"name='{model}'"}))
    return found.get("model_versions", [])


def _tags(stack, model: str, version: str) -> dict[str, str]:
    found = next(v for v in _versions(stack, model) if v["version"] == version)
    return {t["key"]: t["value"] for t in found.get("tags", [])}


def _ended(run: dict) -> datetime:
    return datetime.fromisoformat(run["end_time"].replace("Z", "+00:00"))


def test_the_retrain_schedule_fires_and_registers_a_challenger_only_when_a_prompt_changes(stack, tmp_path):
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.definitions import SPECS, deploy_spec
    from steermoe.config import load_config
    from steermoe.stages import prompt_set_fingerprint

    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(ROOT / "configs" / "smoke_prompts.jsonl", prompts)  # same content, same fingerprint as the UI test's champion
    model = "steermoe-smoke"
    overrides = [f"prompts.sources=[{{path: {prompts}}}]", f"tracking.registered_model={model}", f"output_dir={tmp_path / 'runs'}"]
    old_fp = prompt_set_fingerprint(load_config(ROOT / SMOKE, overrides).prompts)
    spec = next(s for s in SPECS if s.name == "retrain-if-prompts-changed")
    with temporary_settings(updates={PREFECT_API_URL: stack.urls["prefect_api"]}):
        # Every 5 s instead of weekly; one run at a time, a run due while another runs is cancelled.
        deployment_id = deploy_spec(
            spec, name="retrain-every-5s", interval=5, parameters={"config_path": SMOKE, "overrides": overrides, "promote_after": True},
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        )
    try:
        since = datetime(2000, 1, 1, tzinfo=timezone.utc)
        if _alias(stack, model, "champion") is None:  # the UI test did not run: the first scheduled run trains one
            first = _completed_after(stack, deployment_id, since, timeout=300)
            assert "retraining: no champion yet" in _log_text(stack, first, expect="retraining: no champion yet")
            since = _ended(first)
        champion = _alias(stack, model, "champion")
        assert champion is not None, "no champion to compare the prompt sets with"
        assert _tags(stack, model, champion)["prompts.fingerprint"] == old_fp
        registered = len(_versions(stack, model))

        # 1. Unchanged prompt sets: the scheduled run completes and registers nothing.
        unchanged = _completed_after(stack, deployment_id, since, timeout=180)
        assert "skipped: prompt sets unchanged" in _log_text(stack, unchanged, expect="skipped: prompt sets unchanged")
        assert len(_versions(stack, model)) == registered

        # 2. One prompt edited: the next run that starts afterwards trains a new challenger carrying the new fingerprint.
        text = prompts.read_text()
        assert "How do I cook pasta for dinner?" in text
        prompts.write_text(text.replace("How do I cook pasta for dinner?", "How do I cook rice for dinner?"))
        new_fp = prompt_set_fingerprint(load_config(ROOT / SMOKE, overrides).prompts)
        assert new_fp != old_fp
        edited = datetime.now(timezone.utc)
        changed = _completed_after(stack, deployment_id, max(edited, _ended(unchanged)), timeout=300)
        assert "retraining: prompt sets changed" in _log_text(stack, changed, expect="retraining: prompt sets changed")
        challenger = _alias(stack, model, "challenger")
        assert int(challenger) > int(champion)
        assert _tags(stack, model, challenger)["prompts.fingerprint"] == new_fp
    finally:
        api = f"{stack.urls['prefect_api']}/deployments/{deployment_id}"
        rest(f"{api}/pause_deployment", {})  # drops its scheduled runs; a run in flight finishes
        _wait_idle(stack, deployment_id)
        rest(api, method="DELETE")


def _wait_idle(stack, deployment_id: str, timeout: float = 120) -> None:
    """Let a run already in flight finish, so the next test stops an idle stack."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [r for r in _runs_of(stack, deployment_id) if r["state_type"] in ("PENDING", "RUNNING", "CANCELLING")]
        if not busy:
            return
        time.sleep(2)


# ---------------------------------------------------------------- down (last: it stops the module's stack)


def test_a_version_registered_on_the_stack_loads_in_a_fresh_process_and_promotes_head_to_head(stack, tmp_path, tiny_demo_model, monkeypatch):
    """The registry on the stack's Postgres-backed MLflow with proxied artifacts: nothing local is needed to load."""
    from steermoe import stages, tracking
    from steermoe.promotion import promote
    from tests import registry_fixtures as rf
    from tests.test_registry import PREDICT, fresh_process

    uri = stack.urls["mlflow"]
    monkeypatch.setenv("STEERMOE_CACHE", str(tmp_path / "user-cache"))
    cfg = rf.config(tmp_path / "work", tiny_demo_model, rf.write_prompts(tmp_path / "prompts.jsonl"), "tracking.registered_model=stack-registry", tracking_uri=uri)
    world = rf.register(cfg, "on-the-stack", seed=4)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    stages.read_prompt_snapshot(world["prompts"]["prompts_path"], "eval").to_json(fresh / "prompts.jsonl", orient="records", lines=True)
    out = fresh_process(PREDICT, fresh, MLFLOW_TRACKING_URI=uri, STEERMOE_CACHE=str(tmp_path / "fresh-cache"), MODEL_URI="models:/stack-registry@challenger")
    assert out.returncode == 0, out.stderr[-2000:]
    evaluated = pd.read_json(world["evaluation"]["outputs_path"], lines=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == evaluated["response"].tolist()
    result = promote(cfg, "challenger")
    assert result["decision"]["sources"] == {"challenger": "cached", "base": "cached"}
    assert tracking.get_version(uri, "stack-registry", world["registered"]["version"])["tags"]["promotion.run_id"] == result["run_id"]


def test_down_stops_every_process_of_the_stack_and_keeps_its_data(stack):
    assert stack_processes(stack.folder)
    done = cli("stack", "down", "--dir", str(stack.folder), env=stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("worker", "mlflow", "prefect", "postgres"):
        assert f"stopped {name}" in done.stdout
    assert stack_processes(stack.folder) == []
    layout = StackLayout.at(stack.folder)
    assert (layout.postgres_link.resolve() / "data" / "PG_VERSION").exists() and any(layout.artifacts.iterdir())
    again = cli("stack", "down", "--dir", str(stack.folder), env=stack.env)
    assert "no stack is running" in one_line_error(again)
