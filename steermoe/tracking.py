"""MLflow tracking and registry: the only module of the library that imports MLflow (lazily, per call).

Layout of what a pipeline run leaves in MLflow:

- one parent run per pipeline run (flattened config as params, prompt fingerprint and counts),
  with one nested run per stage (its config section as params, its numbers as metrics, its files as
  artifacts: validation report, risk table Parquet/CSV, heatmap, expert list, training curve,
  comparison table);
- one registered model version per candidate: an ``mlflow.pyfunc`` model holding the expert patch and
  a reference to the base model (path + fingerprint), which loads base + patch; alias ``challenger``
  when registered, ``champion`` when promoted; version tags carry fingerprints, the selection and metrics.

Every function takes the tracking URI explicitly (default: SQLite under the cache dir), so the same
code works against an embedded store and an MLflow server. :class:`~mlflow.MlflowClient` is used
instead of the fluent API so nothing depends on a global "active run".
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from steermoe.errors import InputError

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "resolve_tracking_uri",
    "flatten",
    "start_pipeline_run",
    "log_stage",
    "finish_pipeline_run",
    "register_candidate",
    "version_exists",
    "get_version",
    "set_alias",
    "record_promotion",
    "load_registered",
]

CHALLENGER, CHAMPION = "challenger", "champion"
# Record keys whose files are logged as artifacts of a stage's run (folders and patches are not).
_ARTIFACT_KEYS = ("report_path", "table_path", "csv_path", "heatmap_path", "chart_path", "selection_path", "history_path", "comparison_path", "outputs_path")
_PARAM_MAX = 6000


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def _global_uri(uri: str):
    """Point MLflow's fluent API at ``uri`` for a block, then put back what was there.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; left behind, it would redirect the
    next run of a long-lived process (a worker, a test session) that has another cache dir.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old_tracking, old_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)
        registry_utils._registry_uri = old_registry
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def resolve_tracking_uri(tracking_cfg, cache_dir: str | Path) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI`` (how the compose stack points workers at its
    server), else ``sqlite:///<cache_dir>/mlflow/mlflow.db`` (created on first use)."""
    if tracking_cfg.mlflow_uri:
        return tracking_cfg.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(cache_dir).expanduser().resolve() / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    # A SQLite store would put artifacts under ./mlruns of whatever directory we run in; keep them beside the DB.
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_root(uri))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"finetune.learning_rate": "0.003", ...}`` (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_PARAM_MAX]
    return out


def _numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number in a record, nested keys joined with dots."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(_numbers(value, f"{name}."))
    return out


def _log(client, run_id: str, params: Mapping[str, str] = (), metrics: Mapping[str, float] = (), tags: Mapping[str, str] = (), step: int = 0) -> None:
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    params, metrics, tags = dict(params), dict(metrics), dict(tags)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, str(v)[:_PARAM_MAX]) for k, v in tags.items()],
    )


def start_pipeline_run(uri: str, experiment: str, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> dict:
    """Create the parent run of a pipeline run; returns ``{"uri", "run_id", "experiment_id"}``."""
    client = _client(uri)
    exp_id = _experiment_id(client, experiment, uri)
    run = client.create_run(exp_id, run_name=run_name, tags={"steermoe.kind": "pipeline", **(tags or {})})
    _log(client, run.info.run_id, params=flatten(config))
    return {"uri": uri, "run_id": run.info.run_id, "experiment_id": exp_id}


def log_stage(run: Mapping[str, str], stage: str, record: Mapping[str, Any], *, state: str, params: Mapping[str, Any] | None = None) -> str:
    """One nested run for a stage: its config section, its numbers, its files; returns the run id."""
    client = _client(run["uri"])
    child = client.create_run(
        run["experiment_id"], run_name=stage, tags={"mlflow.parentRunId": run["run_id"], "steermoe.stage": stage, "steermoe.state": state}
    )
    run_id = child.info.run_id
    tags: dict[str, str] = {}
    if "fingerprint" in record:
        tags[f"{stage}.fingerprint"] = record["fingerprint"]
    if "experts" in record:
        tags["experts"] = json.dumps(record["experts"])
    _log(client, run_id, params=flatten(params or {}), metrics=_numbers(record), tags=tags)
    for key in _ARTIFACT_KEYS:
        path = record.get(key)
        if path and Path(path).is_file():
            client.log_artifact(run_id, path)
    if record.get("history_path") and Path(record["history_path"]).is_file():
        _log_curve(client, run_id, json.loads(Path(record["history_path"]).read_text(encoding="utf-8")))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_curve(client, run_id: str, history: list[Mapping[str, Any]]) -> None:
    """Training curves: one metric point per logged optimizer step."""
    for i, point in enumerate(history):
        step = int(point.get("step", i))
        metrics = {f"train.{k}": v for k, v in _numbers(point).items() if k != "step"}
        if metrics:
            _log(client, run_id, metrics=metrics, step=step)


def finish_pipeline_run(run: Mapping[str, str], status: str = "FINISHED", metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None) -> None:
    client = _client(run["uri"])
    _log(client, run["run_id"], metrics=dict(metrics or {}), tags=dict(tags or {}))
    client.set_terminated(run["run_id"], status)


# ---------------------------------------------------------------- registry


def _patched_model():
    """The pyfunc model class: base model (by reference) + expert patch. Built here so MLflow stays lazy."""
    import mlflow.pyfunc

    class SteerMoEPatchedModel(mlflow.pyfunc.PythonModel):
        """Loads the base model named in ``base.json`` (checking its fingerprint) and applies the patch."""

        def load_context(self, context):
            from steermoe.finetune import load_patched_model
            from steermoe.modeling import load_tokenizer, model_fingerprint

            base = json.loads(Path(context.artifacts["base"]).read_text(encoding="utf-8"))
            path = Path(context.artifacts["base_weights"]) if "base_weights" in context.artifacts else Path(base["path"])
            if not path.exists():
                raise InputError(f"base model {path} not found; register with tracking.log_base_weights=true or restore the folder")
            if model_fingerprint(path) != base["fingerprint"]:
                raise InputError(f"base model {path} changed since registration (fingerprint != {base['fingerprint']})")
            self.model = load_patched_model(path, context.artifacts["patch"])
            self.model.eval()
            self.tokenizer = load_tokenizer(path)
            self.generation = dict(context.model_config or {})

        def predict(self, context, model_input, params=None):
            import pandas as pd

            from steermoe.modeling import generate
            from steermoe.prompts import to_messages

            settings = {**self.generation, **(params or {})}
            rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else [{"prompt": p} for p in model_input]
            out = generate(
                self.model,
                self.tokenizer,
                [to_messages(r) for r in rows],
                max_new_tokens=int(settings.get("max_new_tokens", 32)),
                batch_size=int(settings.get("batch_size", 16)),
                chat_template_kwargs=settings.get("chat_template_kwargs"),
                progress=False,
            )
            return pd.DataFrame({"response": out.texts})

    return SteerMoEPatchedModel


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy", "pydantic", "pyyaml"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


def register_candidate(tracking_cfg, *, run, model, prompts, selection, finetune, evaluation) -> dict:
    """Log the patch as a pyfunc model in a ``register`` run under the pipeline run, register it as a new
    version of ``tracking_cfg.registered_model`` with tags, and point ``challenger`` at it.

    All or nothing: if any step fails, the version (and the run) are removed before re-raising.
    """
    import mlflow

    client = _client(run["uri"])
    name = tracking_cfg.registered_model
    metrics = {k: float(v) for k, v in _numbers(evaluation.get("metrics", {})).items()}
    child = client.create_run(run["experiment_id"], run_name="register", tags={"mlflow.parentRunId": run["run_id"], "steermoe.stage": "register"})
    run_id, version = child.info.run_id, None
    # The fluent API (log_model, and resolving the logged model when registering it) needs the global URI.
    with _global_uri(run["uri"]):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                base_ref = Path(tmp) / "base.json"
                base_ref.write_text(json.dumps({"path": model["model_path"], "fingerprint": model["fingerprint"]}), encoding="utf-8")
                artifacts = {"patch": finetune["patch_path"], "selection": selection["selection_path"], "base": str(base_ref)}
                if getattr(tracking_cfg, "log_base_weights", False):
                    artifacts["base_weights"] = model["model_path"]
                for key, path in artifacts.items():
                    if not Path(path).exists():
                        raise InputError(f"register: {key} {path} does not exist; re-run the stage that writes it")
                with mlflow.start_run(run_id=run_id):
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=_patched_model()(),
                        artifacts=artifacts,
                        pip_requirements=_pip_requirements(),
                        model_config=evaluation.get("generation", {}),
                    )
            tags = {
                "prompts.fingerprint": prompts["fingerprint"],
                "prompts.counts": json.dumps(prompts.get("counts", {})),
                "model.fingerprint": model["fingerprint"],
                "model.path": model["model_path"],
                "selection.strategy": selection.get("strategy", ""),
                "selection.experts": json.dumps(selection.get("experts", [])),
                "metrics": json.dumps(metrics),
                "pipeline_run_id": run["run_id"],
            }
            if name not in {m.name for m in client.search_registered_models(filter_string=f"name = '{name}'")}:
                client.create_registered_model(name)
            mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id)
            version = mv.version
            client.set_registered_model_alias(name, CHALLENGER, version)
            _log(client, run_id, metrics=metrics, tags={"registered_version": version})
            client.set_terminated(run_id, "FINISHED")
        except BaseException:
            if version is not None:
                client.delete_model_version(name, version)
            client.delete_run(run_id)
            raise
    return {"name": name, "version": str(version), "tracking_uri": run["uri"], "model_uri": f"models:/{name}/{version}", "alias_uri": f"models:/{name}@{CHALLENGER}", "run_id": run_id}


def version_exists(uri: str, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client(uri).get_model_version(name, str(version))
        return True
    except MlflowException:
        return False


def get_version(uri: str, name: str, ref: str) -> dict | None:
    """A version by number or alias -> ``{"version", "tags", "metrics", "aliases"}``; None if absent."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        mv = client.get_model_version(name, ref) if str(ref).isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException:
        return None
    tags = dict(mv.tags)
    return {"name": name, "version": str(mv.version), "tags": tags, "metrics": json.loads(tags.get("metrics", "{}")), "aliases": list(mv.aliases)}


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    _client(uri).set_registered_model_alias(name, alias, str(version))


def record_promotion(uri: str, experiment: str, name: str, version: str, decision: Mapping[str, Any]) -> str:
    """Keep a promotion decision either way: tags on the version and a ``promote`` run with the numbers."""
    client = _client(uri)
    verdict = "promoted" if decision["promote"] else "refused"
    client.set_model_version_tag(name, str(version), "promotion.decision", verdict)
    client.set_model_version_tag(name, str(version), "promotion.reasons", "; ".join(decision["reasons"])[:_PARAM_MAX])
    run = client.create_run(_experiment_id(client, experiment, uri), run_name=f"promote-{name}-v{version}", tags={"steermoe.kind": "promotion"})
    _log(client, run.info.run_id, metrics=_numbers(decision.get("numbers", {})), tags={"decision": verdict, "candidate": f"{name}/{version}", "reference": decision.get("reference", "")})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(json.dumps(dict(decision), indent=2), encoding="utf-8")
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def load_registered(uri: str, model_uri: str):
    """``mlflow.pyfunc.load_model`` against ``uri`` (e.g. ``models:/steermoe-demo@challenger``)."""
    import mlflow.pyfunc

    with _global_uri(uri):
        return mlflow.pyfunc.load_model(model_uri)

