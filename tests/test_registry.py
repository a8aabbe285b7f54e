"""Registered versions travel: MLflow model from code (no pickle), signature and input example, a base
reference that resolves on another machine (MLflow artifact logged once per base, or hub id + revision),
a fingerprint check on load, metrics with intervals on the logged model, lineage tags. Real tiny demo
model, real evaluation stage, real SQLite MLflow store, fresh processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from steermoe import stages, tracking
from steermoe.errors import InputError
from tests import registry_fixtures as rf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_demo_model):
    """Two versions registered from a working folder holding its own copy of the base model."""
    root = tmp_path_factory.mktemp("registry")
    work = root / "work"
    shutil.copytree(tiny_demo_model, work / "model")
    cfg = rf.config(work, work / "model", rf.write_prompts(work / "prompts.jsonl"))
    env = {"STEERMOE_CACHE": str(root / "user-cache")}  # where loads keep downloaded base weights
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        first = rf.register(cfg, "first", seed=1)
        second = rf.register(cfg, "second", seed=2)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {"root": root, "work": work, "cfg": cfg, "first": first, "second": second, "uri": first["uri"]}


def fresh_process(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


PREDICT = """
import json, os, mlflow, pandas as pd
model = mlflow.pyfunc.load_model(os.environ.get("MODEL_URI", "models:/m@challenger"))
prompts = pd.read_json("prompts.jsonl", lines=True)
print(json.dumps(model.predict(prompts[["prompt"]])["response"].tolist()))
"""


def test_a_version_moved_to_a_fresh_folder_loads_in_a_fresh_process_and_answers_as_evaluated(world, tmp_path):
    evaluated = pd.read_json(world["second"]["evaluation"]["outputs_path"], lines=True)
    snapshot = world["second"]["prompts"]["prompts_path"]
    eval_prompts = stages.read_prompt_snapshot(snapshot, "eval")
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    eval_prompts.to_json(fresh / "prompts.jsonl", orient="records", lines=True)
    moved = world["root"] / "moved-away"
    shutil.move(world["work"] / "model", moved)  # the base folder is gone from where it was registered
    try:
        out = fresh_process(PREDICT, fresh, MLFLOW_TRACKING_URI=world["uri"], STEERMOE_CACHE=str(tmp_path / "cache"))
    finally:
        shutil.move(moved, world["work"] / "model")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == evaluated["response"].tolist()
    assert (tmp_path / "cache" / "base-models" / world["second"]["model"]["fingerprint"] / "config.json").exists()


def test_the_version_is_a_model_from_code_with_signature_and_input_example(world, tmp_path):
    from mlflow.artifacts import download_artifacts

    source = MlflowClient(world["uri"]).get_model_version_download_uri("m", "2")
    got = Path(download_artifacts(artifact_uri=source, dst_path=str(tmp_path), tracking_uri=world["uri"]))
    mlmodel = (got / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in {p.name for p in got.rglob("*")}
    assert (got / "input_example.json").exists() and (got / "serving_input_example.json").exists()
    info = tracking.load_registered(world["uri"], "models:/m/2").metadata
    assert [c.name for c in info.get_input_schema().inputs] == ["prompt"] and [c.name for c in info.get_output_schema().inputs] == ["response"]
    assert {p.name for p in info.get_params_schema().params} == {"max_new_tokens", "batch_size"}
    base = json.loads((got / "artifacts" / "base.json").read_text())
    assert base["kind"] == "mlflow" and base["fingerprint"] == world["second"]["model"]["fingerprint"]
    assert not any(p.suffix == ".safetensors" and p.parent.name != "patch" for p in got.rglob("*"))  # no base weights copied in


def test_base_weights_are_logged_once_per_base_and_shared_by_every_version(world):
    client = MlflowClient(world["uri"])
    refs = {v.tags["base.reference"] for v in client.search_model_versions("name = 'm'")}
    assert len(refs) == 1 and next(iter(refs)).startswith("runs:/")
    experiment = client.get_experiment_by_name(world["cfg"].tracking.experiment).experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`steermoe.kind` = 'base-weights'")
    assert len(runs) == 1 and refs == {f"runs:/{runs[0].info.run_id}/base"} and runs[0].data.tags["steermoe.base_fingerprint"] == world["first"]["model"]["fingerprint"]


def test_metrics_and_intervals_are_on_the_logged_model_and_the_run_with_fingerprint_and_lineage_tags(world):
    client = MlflowClient(world["uri"])
    reg = world["second"]["registered"]
    model = client.get_logged_model(reg["model_id"])
    metrics = {m.key: m for m in model.metrics}
    assert {"refusal_rate", "refusal_rate.ci_low", "refusal_rate.ci_high", "over_refusal", "utility_loss", "base.refusal_rate"} <= set(metrics)
    assert metrics["refusal_rate.ci_low"].value <= metrics["refusal_rate"].value <= metrics["refusal_rate.ci_high"].value
    fp = world["second"]["evaluation"]["eval_set"]["fingerprint"]
    assert metrics["refusal_rate"].dataset_name == f"eval-{fp}"
    run = client.get_run(reg["run_id"])
    assert run.data.metrics["refusal_rate"] == metrics["refusal_rate"].value
    assert "experts.json" in {a.path for a in client.list_artifacts(reg["run_id"])}
    tags = tracking.get_version(world["uri"], "m", reg["version"])["tags"]
    assert tags["model.fingerprint"] == world["second"]["model"]["fingerprint"] and tags["prompts.fingerprint"] == world["second"]["prompts"]["fingerprint"]
    assert tags["eval_set.fingerprint"] == fp and json.loads(tags["selection.experts"]) == [list(e) for e in rf.SELECTION.experts]
    assert client.get_run(tags["lineage.pipeline_run_id"]).info.run_name == "second"
    assert tags["lineage.validate_prompts"].endswith("/validation_report.json") and tags["lineage.select_experts"].endswith("/selection.json")


def test_a_changed_base_is_refused_on_load_with_one_line(world, tmp_path):
    model = world["second"]["model"]
    ref = {"kind": "path", "path": str(tmp_path / "base"), "fingerprint": model["fingerprint"]}
    shutil.copytree(model["model_path"], tmp_path / "base")
    assert tracking.resolve_base(ref) == tmp_path / "base"
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps({**config, "rope_theta": 1234.0}))
    with pytest.raises(InputError) as err:
        tracking.resolve_base(ref)
    message = str(err.value)
    assert "\n" not in message and f"registered on {model['fingerprint']}" in message and "restore" in message
    with pytest.raises(InputError, match="not found on this machine"):
        tracking.resolve_base({**ref, "path": str(tmp_path / "nowhere")})


def test_a_base_from_the_hub_cache_is_referenced_by_repo_and_revision_and_resolves_offline(world, tmp_path):
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--steermoe--tiny-demo" / "snapshots" / revision
    shutil.copytree(world["second"]["model"]["model_path"], snapshot)
    model = {"model_path": str(snapshot), "fingerprint": world["second"]["model"]["fingerprint"]}
    ref = tracking.base_reference("auto", model, uri=world["uri"], experiment_id="0")
    assert ref == {"kind": "hub", "repo_id": "steermoe/tiny-demo", "revision": revision, "fingerprint": model["fingerprint"]}
    code = f"import json; from steermoe.tracking import resolve_base; print(resolve_base({json.dumps(ref)}))"
    out = fresh_process(code, tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"))
    assert out.returncode == 0, out.stderr[-1500:]
    assert Path(out.stdout.strip()) == snapshot
    with pytest.raises(InputError, match="not a Hugging Face hub snapshot"):
        tracking.base_reference("hub", world["second"]["model"], uri=world["uri"], experiment_id="0")


def test_loading_a_version_whose_base_changed_fails_with_one_line_and_a_damaged_cached_copy_is_fetched_again(world, tmp_path):
    from mlflow.artifacts import download_artifacts

    source = MlflowClient(world["uri"]).get_model_version_download_uri("m", "2")
    local = Path(download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "v2"), tracking_uri=world["uri"]))
    fingerprint = world["second"]["model"]["fingerprint"]
    # A damaged copy in the download cache is replaced by the logged weights, and the load succeeds.
    cached = tmp_path / "cache" / "base-models" / fingerprint
    shutil.copytree(world["second"]["model"]["model_path"], cached)
    (cached / "config.json").write_text(json.dumps({**json.loads((cached / "config.json").read_text()), "rope_theta": 1.0}))
    load = f"import mlflow; mlflow.pyfunc.load_model({str(local)!r}); print('loaded')"
    out = fresh_process(load, tmp_path, MLFLOW_TRACKING_URI=world["uri"], STEERMOE_CACHE=str(tmp_path / "cache"))
    assert out.returncode == 0 and out.stdout.strip().endswith("loaded"), out.stderr[-1500:]
    assert tracking.resolve_base({"kind": "path", "path": str(cached), "fingerprint": fingerprint}) == cached
    # A base the version points at by path, changed since: refused, one line, saying what to do.
    changed = tmp_path / "changed-base"
    shutil.copytree(cached, changed)
    (changed / "config.json").write_text(json.dumps({**json.loads((changed / "config.json").read_text()), "rope_theta": 2.0}))
    (local / "artifacts" / "base.json").write_text(json.dumps({"kind": "path", "path": str(changed), "fingerprint": fingerprint}))
    out = fresh_process(load, tmp_path, MLFLOW_TRACKING_URI=world["uri"], STEERMOE_CACHE=str(tmp_path / "cache"))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("steermoe.errors.InputError: base model") and f"registered on {fingerprint}" in last and "restore" in last


def test_registering_a_candidate_again_returns_its_version_and_moves_challenger_back(world):
    """What a run killed after registering does on its rerun: one candidate never gets two versions."""
    first, out = world["first"], Path(world["cfg"].output_dir) / "first"
    selection = {"selection_path": str(out / "selection.json"), "strategy": "manual", "experts": [list(e) for e in rf.SELECTION.experts]}
    run = tracking.start_pipeline_run(world["uri"], world["cfg"].tracking.experiment, "again", {})
    again = tracking.register_candidate(
        world["cfg"].tracking, run=run, model=first["model"], prompts=first["prompts"], selection=selection,
        finetune={"patch_path": str(out / "patch")}, evaluation=first["evaluation"],
    )
    assert again["version"] == first["registered"]["version"] != world["second"]["registered"]["version"]
    assert len(MlflowClient(world["uri"]).search_model_versions("name = 'm'")) == 2
    assert tracking.get_version(world["uri"], "m", "challenger")["version"] == again["version"]
