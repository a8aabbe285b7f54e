"""MLflow tracking against a real SQLite store (and one real `mlflow server`)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from mlflow import MlflowClient

from steermoe import tracking
from steermoe.config import TrackingConfig
from steermoe.errors import InputError


def sqlite_uri(tmp_path):
    assert not os.environ.get("MLFLOW_TRACKING_URI"), "tests must not write to a real tracking server"
    return tracking.resolve_tracking_uri(TrackingConfig(), tmp_path / "cache")


def candidate_inputs(tmp_path, uri, experiment="exp"):
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "experts.safetensors").write_bytes(b"not really weights")
    (tmp_path / "selection.json").write_text(json.dumps({"experts": [[0, 1]], "scores": [0.2], "strategy": "threshold"}))
    run = tracking.start_pipeline_run(uri, experiment, "demo", {"a": 1})
    return dict(
        run=run,
        model={"model_path": str(tmp_path / "base"), "fingerprint": "abc"},
        prompts={"fingerprint": "f00d", "counts": {"safe": 3, "unsafe": 3}},
        selection={"selection_path": str(tmp_path / "selection.json"), "strategy": "threshold", "experts": [[0, 1]]},
        finetune={"patch_path": str(patch)},
        evaluation={"metrics": {"finetuned": {"refusal_rate": 0.9}, "base": {"refusal_rate": 0.1}}, "generation": {"max_new_tokens": 4}},
    )


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


def test_registration_sets_tags_and_the_challenger_alias(tmp_path):
    uri = sqlite_uri(tmp_path)
    cfg = TrackingConfig(registered_model="m")
    rec = tracking.register_candidate(cfg, **candidate_inputs(tmp_path, uri))
    assert rec["version"] == "1" and rec["alias_uri"] == "models:/m@challenger"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the fluent API's URI does not leak into later runs
    by_alias = tracking.get_version(uri, "m", "challenger")
    assert by_alias == tracking.get_version(uri, "m", "1")
    assert by_alias["tags"]["prompts.fingerprint"] == "f00d" and by_alias["tags"]["model.fingerprint"] == "abc"
    assert by_alias["metrics"] == {"finetuned.refusal_rate": 0.9, "base.refusal_rate": 0.1}
    assert json.loads(by_alias["tags"]["selection.experts"]) == [[0, 1]]
    assert tracking.version_exists(uri, "m", "1") and not tracking.version_exists(uri, "m", "2")
    tracking.set_alias(uri, "m", tracking.CHAMPION, "1")
    tracking.record_promotion(uri, "exp", "m", "1", {"promote": True, "reasons": ["ok: fine"], "reference": "base", "numbers": {"refusal_gain": 0.8}})
    v = tracking.get_version(uri, "m", "champion")
    assert v["tags"]["promotion.decision"] == "promoted" and "champion" in v["aliases"]


def test_a_failed_registration_leaves_no_version_and_no_run(tmp_path):
    uri = sqlite_uri(tmp_path)
    inputs = candidate_inputs(tmp_path, uri)
    inputs["finetune"] = {"patch_path": str(tmp_path / "gone")}
    with pytest.raises(InputError, match="patch"):
        tracking.register_candidate(TrackingConfig(registered_model="m"), **inputs)
    client = MlflowClient(uri)
    assert client.search_model_versions("name = 'm'") == []
    runs = client.search_runs([inputs["run"]["experiment_id"]])
    assert [r.info.run_name for r in runs] == ["demo"]  # the half-made register run was deleted


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_same_calls_work_against_an_mlflow_server(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "artifacts")]
    # Its own process group: `mlflow server` starts the web server as a child process.
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"), start_new_session=True)
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
        rec = tracking.register_candidate(TrackingConfig(registered_model="m"), **candidate_inputs(tmp_path, uri))
        assert tracking.get_version(uri, "m", "challenger")["version"] == rec["version"] == "1"
        assert any((tmp_path / "artifacts").rglob("experts.safetensors"))  # uploaded through the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
