"""MLflow tracking against a real SQLite store (and one real `mlflow server`)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pandas as pd
import pytest
from mlflow import MlflowClient

from steermoe import stages, tracking
from steermoe.config import TrackingConfig
from steermoe.errors import InputError


def sqlite_uri(tmp_path):
    assert not os.environ.get("MLFLOW_TRACKING_URI"), "tests must not write to a real tracking server"
    return tracking.resolve_tracking_uri(TrackingConfig(), tmp_path / "cache")


def test_default_uri_is_sqlite_under_the_cache_dir_and_a_given_uri_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sqlite_uri(tmp_path) == f"sqlite:///{(tmp_path / 'cache' / 'mlflow' / 'mlflow.db').resolve()}"
    assert tracking.resolve_tracking_uri(TrackingConfig(mlflow_uri="http://mlflow:5000"), tmp_path) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking.resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://server:5000"


def test_flatten_joins_nested_keys_and_keeps_lists_as_json():
    flat = tracking.flatten({"finetune": {"learning_rate": 0.003, "baselines": ["random"]}, "run_name": "demo", "x": {}})
    assert flat == {"finetune.learning_rate": "0.003", "finetune.baselines": '["random"]', "run_name": "demo", "x": "{}"}


def test_a_stage_run_nests_under_the_pipeline_run_with_params_metrics_and_files(tmp_path):
    uri = sqlite_uri(tmp_path)
    run = tracking.start_pipeline_run(uri, "exp", "demo", {"analysis": {"segment": "all"}})
    table = tmp_path / "risk_table.parquet"
    pd.DataFrame({"layer": [0], "expert": [1], "risk_diff": [0.2]}).to_parquet(table)
    (tmp_path / "store").mkdir()
    record = {"table_path": str(table), "store_path": str(tmp_path / "store"), "rows": 1, "metrics": {"max": 0.2}, "experts": [[0, 1]]}
    child = tracking.log_stage(run, "risk_difference", record, state="Completed", params={"analysis": {"segment": "all"}})
    client = MlflowClient(uri)
    got = client.get_run(child)
    assert got.data.tags["mlflow.parentRunId"] == run["run_id"]
    assert got.data.tags["steermoe.state"] == "Completed"
    assert json.loads(got.data.tags["experts"]) == [[0, 1]]
    assert got.data.params == {"analysis.segment": "all"}
    assert got.data.metrics == {"rows": 1.0, "metrics.max": 0.2}
    assert [a.path for a in client.list_artifacts(child)] == ["risk_table.parquet"]  # folders are not copied
    assert client.get_run(run["run_id"]).data.params == {"analysis.segment": "all"}
    assert (tmp_path / "cache" / "mlflow" / "artifacts").is_dir()  # artifacts beside the DB, not in ./mlruns


def test_a_failed_registration_leaves_no_version_and_no_run(tmp_path):
    uri = sqlite_uri(tmp_path)
    run = tracking.start_pipeline_run(uri, "exp", "demo", {"a": 1})
    (tmp_path / "selection.json").write_text(json.dumps({"experts": [[0, 1]], "scores": [0.2], "strategy": "manual"}))
    inputs = dict(
        run=run, model={"model_path": str(tmp_path / "base"), "fingerprint": "abc"}, prompts={"fingerprint": "f00d"},
        selection={"selection_path": str(tmp_path / "selection.json"), "experts": [[0, 1]]}, finetune={"patch_path": str(tmp_path / "gone")},
        evaluation={"outputs_path": str(tmp_path / "selection.json")},
    )
    with pytest.raises(InputError, match="patch"):
        tracking.register_candidate(TrackingConfig(registered_model="m"), **inputs)
    client = MlflowClient(uri)
    assert client.search_model_versions("name = 'm'") == []
    assert [r.info.run_name for r in client.search_runs([run["experiment_id"]])] == ["demo"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port: SQLite backend, proxied artifacts, no job consumers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")]
    # Without this, MLflow 3.17 starts ~7 huey job-consumer processes (~250 MB each) we never use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # Its own process group: `mlflow server` starts the web server as a child process.
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-500:]}")
                time.sleep(0.5)
        yield uri, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out] + [q for p in out for q in _process_tree(int(p))]


@pytest.mark.slow
def test_register_and_load_through_an_mlflow_server_with_proxied_artifacts(tmp_path, tiny_demo_model, monkeypatch):
    from tests import registry_fixtures as rf
    from tests.test_registry import PREDICT, fresh_process

    monkeypatch.setenv("STEERMOE_CACHE", str(tmp_path / "user-cache"))
    with mlflow_server(tmp_path) as (uri, server):
        assert len(_process_tree(server.pid)) <= 3, "job consumers were started"  # server, uvicorn and its worker
        cfg = rf.config(tmp_path / "work", tiny_demo_model, rf.write_prompts(tmp_path / "prompts.jsonl"), tracking_uri=uri)
        world = rf.register(cfg, "served", seed=3)
        assert tracking.get_version(uri, "m", "challenger")["version"] == world["registered"]["version"] == "1"
        assert any((tmp_path / "artifacts").rglob("experts.safetensors"))  # uploaded through the server
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        stages.read_prompt_snapshot(world["prompts"]["prompts_path"], "eval").to_json(fresh / "prompts.jsonl", orient="records", lines=True)
        out = fresh_process(PREDICT, fresh, MLFLOW_TRACKING_URI=uri, STEERMOE_CACHE=str(tmp_path / "fresh-cache"))
        assert out.returncode == 0, out.stderr[-2000:]
        evaluated = pd.read_json(world["evaluation"]["outputs_path"], lines=True)
        assert json.loads(out.stdout.strip().splitlines()[-1]) == evaluated["response"].tolist()

        from steermoe.promotion import promote

        result = promote(cfg, "challenger")  # head to head with its base, on the results the server keeps
        assert result["decision"]["sources"] == {"challenger": "cached", "base": "cached"}
        tags = tracking.get_version(uri, "m", "1")["tags"]
        assert tags["promotion.run_id"] == result["run_id"] and tags["promotion.eval_set"] == world["evaluation"]["eval_set"]["fingerprint"]
        assert MlflowClient(uri).get_run(result["run_id"]).info.status == "FINISHED"


def test_database_passwords_never_become_params_or_tags(tmp_path):
    uri = sqlite_uri(tmp_path)
    run = tracking.start_pipeline_run(uri, "exp", "demo", {"tracking": {"mlflow_uri": "postgresql://mlflow:hunter2@db/mlflow"}}, tags={"note": "https://u:pw@h/x"})
    data = MlflowClient(uri).get_run(run["run_id"]).data
    assert data.params["tracking.mlflow_uri"] == "postgresql://mlflow:***@db/mlflow" and data.tags["note"] == "https://u:***@h/x"
