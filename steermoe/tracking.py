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
    "BASE_KINDS",
    "resolve_tracking_uri",
    "flatten",
    "start_pipeline_run",
    "log_stage",
    "finish_pipeline_run",
    "hub_origin",
    "base_reference",
    "resolve_base",
    "serve_patched_model",
    "register_candidate",
    "log_model_metrics",
    "evaluation_tags",
    "version_exists",
    "get_version",
    "set_alias",
    "read_cached_evaluation",
    "record_evaluation",
    "start_promotion_run",
    "record_promotion",
    "fail_promotion_run",
    "download_version",
    "load_registered",
]

CHALLENGER, CHAMPION = "challenger", "champion"
# Record keys whose files are logged as artifacts of a stage's run (folders and patches are not).
_ARTIFACT_KEYS = ("report_path", "table_path", "csv_path", "heatmap_path", "chart_path", "selection_path", "history_path", "comparison_path", "outputs_path")
_PARAM_MAX = 6000
_PATH_KEYS = ("store_path", "prompts_path", "patch_path", "model_path")


_READY: set[str] = set()


def _client(uri: str):
    import mlflow

    if uri.startswith("sqlite:///") and uri not in _READY:
        # The first client of a new SQLite store creates its schema; two processes doing that at once break
        # the migration, so concurrent runs sharing a cache dir take turns (once per process and URI).
        from steermoe.files import file_lock

        with file_lock(f"{uri[len('sqlite:///'):]}.init.lock", "mlflow store"):
            client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
            client._tracking_client.store  # noqa: B018 - creating the store runs the migrations
            client._get_registry_client().store  # noqa: B018
        _READY.add(uri)
        return client
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

    from steermoe.servers import redact_url

    now = int(time.time() * 1000)
    params, metrics, tags = dict(params), dict(metrics), dict(tags)
    client.log_batch(  # a database URL's password never becomes a param or a tag
        run_id,
        metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
        params=[Param(k, redact_url(str(v))) for k, v in params.items()],
        tags=[RunTag(k, redact_url(str(v))[:_PARAM_MAX]) for k, v in tags.items()],
    )


def start_pipeline_run(uri: str, experiment: str, run_name: str, config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> dict:
    """Create the parent run of a pipeline run; returns ``{"uri", "run_id", "experiment_id"}``."""
    client = _client(uri)
    exp_id = _experiment_id(client, experiment, uri)
    from steermoe.servers import redact_url

    tags = {k: redact_url(str(v)) for k, v in (tags or {}).items()}
    run = client.create_run(exp_id, run_name=run_name, tags={"steermoe.kind": "pipeline", **tags})
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
    for key in _PATH_KEYS:  # folders are not copied; their place is kept so lineage can point at them
        if record.get(key):
            tags[f"path.{key}"] = str(record[key])
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


# ---------------------------------------------------------------- base model references

BASE_KINDS = ("auto", "hub", "mlflow", "path")
_BASE_RUN_KIND = "base-weights"


def hub_origin(path: str | Path) -> tuple[str, str] | None:
    """``(repo_id, revision)`` when ``path`` is a snapshot folder of a Hugging Face hub cache
    (``.../models--org--name/snapshots/<commit>``), else None."""
    parts = Path(path).resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--") :].replace("--", "/"), parts[-1]
    return None


def _base_weights_run(client, experiment_id: str, model_path: str, fingerprint: str) -> str:
    """The run holding the base weights of ``fingerprint`` (logged once, reused by every version)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`steermoe.kind` = '{_BASE_RUN_KIND}' and tags.`steermoe.base_fingerprint` = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"base-{fingerprint}", tags={"steermoe.kind": _BASE_RUN_KIND, "steermoe.base_fingerprint": fingerprint})
    try:
        client.log_artifacts(run.info.run_id, model_path, "base")
    except BaseException:
        client.delete_run(run.info.run_id)
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def base_reference(kind: str, model: Mapping[str, Any], *, uri: str, experiment_id: str) -> dict:
    """How a registered version finds its base model on another machine.

    ``hub``: repo id + revision (the base is a hub-cache snapshot); ``mlflow``: a ``runs:/`` URI of the
    base weights, logged once per base fingerprint; ``path``: the local folder (only when asked for);
    ``auto``: hub when the base came from the hub, else mlflow.
    """
    if kind not in BASE_KINDS:
        raise InputError(f"tracking.base_reference: {kind!r} is not one of {', '.join(BASE_KINDS)}")
    path, fingerprint = str(model["model_path"]), model["fingerprint"]
    if kind in ("auto", "hub"):
        origin = hub_origin(path)
        if origin is not None:
            return {"kind": "hub", "repo_id": origin[0], "revision": origin[1], "fingerprint": fingerprint}
        if kind == "hub":
            raise InputError(
                f"tracking.base_reference=hub: base model {path} is not a Hugging Face hub snapshot (.../models--org--name/snapshots/<commit>); "
                "load it from the hub cache, or use 'mlflow' (weights logged once) or 'path'"
            )
    if kind == "path":
        return {"kind": "path", "path": path, "fingerprint": fingerprint}
    run_id = _base_weights_run(_client(uri), experiment_id, path, fingerprint)
    return {"kind": "mlflow", "uri": f"runs:/{run_id}/base", "fingerprint": fingerprint}


def _describe(ref: Mapping[str, Any]) -> str:
    return {"hub": lambda: f"{ref.get('repo_id')}@{ref.get('revision')}", "mlflow": lambda: str(ref.get("uri")), "path": lambda: str(ref.get("path"))}[ref["kind"]]()


def _fetch_hub(ref: Mapping[str, Any]) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref["repo_id"], revision=ref["revision"]))
    except Exception as e:  # noqa: BLE001 - the hub client raises many kinds; all mean "not reachable here"
        raise InputError(
            f"base model {_describe(ref)} is not available here ({str(e).splitlines()[0][:200]}); "
            "download it into the Hugging Face cache (HF_HOME) or allow hub access"
        ) from None


def _fetch_mlflow(ref: Mapping[str, Any], tracking_uri: str | None) -> Path:
    """Download the logged base weights once into the cache dir (keyed by fingerprint)."""
    import mlflow.artifacts

    from steermoe.config import default_cache_dir

    local = default_cache_dir() / "base-models" / ref["fingerprint"]
    if (local / "config.json").exists():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=local.parent, prefix=".download-"))
    try:
        got = mlflow.artifacts.download_artifacts(artifact_uri=ref["uri"], dst_path=str(tmp), tracking_uri=tracking_uri)
        os.replace(got, local)
    except Exception as e:  # noqa: BLE001 - store, network and permission errors all mean "cannot fetch"
        if not (local / "config.json").exists():  # another process may have won the race
            raise InputError(f"base model {ref['uri']} cannot be downloaded from {tracking_uri} ({str(e).splitlines()[0][:200]}); check the tracking URI") from None
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return local


def resolve_base(ref: Mapping[str, Any], tracking_uri: str | None = None) -> Path:
    """The local folder of a version's base model, after checking it is the one the version was made on."""
    from steermoe.modeling import model_fingerprint

    if "kind" not in ref and "path" in ref:  # versions registered before references had kinds
        ref = {**ref, "kind": "path"}
    if ref.get("kind") == "hub":
        path = _fetch_hub(ref)
    elif ref.get("kind") == "mlflow":
        path = _fetch_mlflow(ref, tracking_uri)
    elif ref.get("kind") == "path":
        path = Path(ref["path"])
        if not (path / "config.json").exists():
            raise InputError(f"base model {path} not found on this machine; restore the folder, or register with tracking.base_reference=mlflow or hub")
    else:
        raise InputError(f"registered model: unknown base reference {dict(ref)}; register the version again")
    found = model_fingerprint(path)
    if found != ref["fingerprint"] and ref["kind"] == "mlflow":
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # a damaged cached copy: fetch the logged weights once more
        path = _fetch_mlflow(ref, tracking_uri)
        found = model_fingerprint(path)
    if found != ref["fingerprint"]:
        raise InputError(
            f"base model {_describe(ref)} ({path}) has fingerprint {found}, but the version was registered on {ref['fingerprint']}; "
            "restore those base weights or register a new version on this base"
        )
    return path


# ---------------------------------------------------------------- the registered model (MLflow model from code)

MODEL_CODE = Path(__file__).resolve().parent / "registered_model.py"


def _patched_model():
    """The pyfunc model class: base model (by reference) + expert patch. Built here so MLflow stays lazy."""
    import mlflow
    import mlflow.pyfunc

    class SteerMoEPatchedModel(mlflow.pyfunc.PythonModel):
        """Resolves the base model named in ``base.json`` (checking its fingerprint) and applies the patch."""

        def load_context(self, context):
            from steermoe.modeling import load_pretrained, model_section

            base = json.loads(Path(context.artifacts["base"]).read_text(encoding="utf-8"))
            path = resolve_base(base, mlflow.get_tracking_uri())
            self.generation = dict(context.model_config or {})
            # Loaded as evaluated (dtype, attention kernel, remote code); the device is this machine's choice.
            section = model_section(**self.generation.pop("model", {}), device=os.environ.get("STEERMOE_DEVICE", "auto"))
            self.model, self.tokenizer = load_pretrained(section, path, patch=context.artifacts["patch"])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            from steermoe.generation import GenerationSettings
            from steermoe.modeling import generate
            from steermoe.prompts import to_messages

            settings = {**self.generation, **(params or {})}
            if isinstance(model_input, pd.DataFrame):
                rows = model_input.to_dict("records")
            else:
                rows = [{"prompt": p} if isinstance(p, str) else dict(p) for p in model_input]
            generation = GenerationSettings(
                max_new_tokens=int(settings.get("max_new_tokens", 32)), batch_size=int(settings.get("batch_size", 16)),
                chat_template_kwargs=settings.get("chat_template_kwargs") or {},
            )
            out = generate(self.model, self.tokenizer, [to_messages(r) for r in rows], generation, progress=False)
            return pd.DataFrame({"response": out.texts})

    return SteerMoEPatchedModel


def serve_patched_model() -> None:
    """Called by ``registered_model.py`` (the model-from-code file) when MLflow loads a version."""
    import mlflow.models

    mlflow.models.set_model(_patched_model()())


def _signature(generation: Mapping[str, Any]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = [ParamSpec(k, "long", int(generation.get(k, d))) for k, d in (("max_new_tokens", 32), ("batch_size", 16))]
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string", "response")]), params=ParamSchema(params))


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy", "pydantic", "pyyaml", "huggingface_hub"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


# ---------------------------------------------------------------- registration


def _stage_runs(client, run: Mapping[str, str]) -> dict[str, Any]:
    """The nested stage runs of a pipeline run, by stage name (the newest when a stage ran twice)."""
    children = client.search_runs([run["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{run['run_id']}'", order_by=["attributes.start_time ASC"])
    return {c.data.tags["steermoe.stage"]: c for c in children if "steermoe.stage" in c.data.tags}


def _lineage(client, run: Mapping[str, str], model: Mapping, prompts: Mapping, selection: Mapping) -> dict[str, str]:
    """Version tags that lead a reviewer from the model to what produced it."""
    stages = _stage_runs(client, run)
    tags = {
        "lineage.pipeline_run_id": run["run_id"],
        "prompts.fingerprint": prompts["fingerprint"],
        "prompts.counts": json.dumps(prompts.get("counts", {})),
        "model.fingerprint": model["fingerprint"],
        "selection.strategy": selection.get("strategy", ""),
        "selection.experts": json.dumps(selection.get("experts", [])),
    }
    for stage, artifact in (("validate_prompts", "validation_report.json"), ("risk_difference", "risk_table.parquet"), ("select_experts", "selection.json"), ("collect_routing", None)):
        if stage in stages:
            run_id = stages[stage].info.run_id
            tags[f"lineage.{stage}_run_id"] = run_id
            if artifact:
                tags[f"lineage.{stage}"] = f"runs:/{run_id}/{artifact}"
    routing = stages.get("collect_routing")
    if routing is not None and "path.store_path" in routing.data.tags:
        tags["lineage.routing_store"] = routing.data.tags["path.store_path"]
    return tags


def _model_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The candidate's metrics unprefixed, every compared model's prefixed, each with its interval bounds."""
    from steermoe.stages import CANDIDATE

    out: dict[str, float] = {}
    intervals = evaluation.get("intervals", {})
    for model, metrics in evaluation.get("metrics", {}).items():
        prefix = "" if model == evaluation.get("candidate", CANDIDATE) else f"{model}."
        for name, value in _numbers(metrics).items():
            out[f"{prefix}{name}"] = value
            low, high = (intervals.get(model, {}).get(name) or (None, None))
            for suffix, bound in (("ci_low", low), ("ci_high", high)):
                if bound is not None and math.isfinite(bound):
                    out[f"{prefix}{name}.{suffix}"] = float(bound)
    return out


def log_model_metrics(uri: str, run_id: str, model_id: str, metrics: Mapping[str, float], *, dataset: tuple[str, str] | None = None) -> None:
    """Metrics on the run *and* on the logged model (MLflow 3: they show on the model and version pages),
    linked to the evaluation set (``dataset = (name, digest)``) when given."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    name, digest = dataset or (None, None)
    batch = [Metric(k, float(v), now, 0, model_id=model_id, dataset_name=name, dataset_digest=digest) for k, v in metrics.items()]
    for i in range(0, len(batch), 500):
        _client(uri).log_batch(run_id, metrics=batch[i : i + 500])


def _log_eval_set(uri: str, run_id: str, model_id: str, frame, eval_fp: str) -> tuple[str, str]:
    """The evaluation set as an MLflow dataset input of the run, linked to the model; returns (name, digest)."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput

    columns = [c for c in ("id", "label", "category", "prompt") if c in frame.columns]
    dataset = mlflow.data.from_pandas(frame[columns], name=f"eval-{eval_fp}", digest=eval_fp)
    entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "evaluation")])
    _client(uri).log_inputs(run_id, datasets=[entity], models=[LoggedModelInput(model_id)])
    return dataset.name, dataset.digest


def _log_evaluation_frames(client, run_id: str, key: str, frames: Mapping[str, Any]) -> dict[str, str]:
    """Per-prompt results (the promotion cache) as run artifacts; returns ``{role: runs:/ URI}``."""
    uris = {}
    with tempfile.TemporaryDirectory() as tmp:
        for role, frame in frames.items():
            path = Path(tmp) / f"{role}.jsonl"
            frame.to_json(path, orient="records", lines=True, force_ascii=False, double_precision=15)
            client.log_artifact(run_id, str(path), f"evaluations/{key}")
            uris[role] = f"runs:/{run_id}/evaluations/{key}/{role}.jsonl"
    return uris


def evaluation_tags(key: str, uris: Mapping[str, str], eval_fp: str) -> dict[str, str]:
    """Version tags pointing at cached per-prompt results of ``key`` (``model``: this version, ``base``: its base)."""
    tags = {f"evaluation.{key}" + ("" if role == "model" else f".{role}"): uri for role, uri in uris.items()}
    return {**tags, "eval_set.fingerprint": eval_fp, "evaluation.key": key}


def _candidate_frames(evaluation: Mapping[str, Any]):
    import pandas as pd

    outputs = Path(evaluation["outputs_path"])
    frames = {"model": pd.read_json(outputs, lines=True, dtype={"id": str})}
    if (outputs.parent / "base.jsonl").exists():
        frames["base"] = pd.read_json(outputs.parent / "base.jsonl", lines=True, dtype={"id": str})
    return frames


def _check_inputs(finetune: Mapping, selection: Mapping, evaluation: Mapping) -> None:
    for key, path in (("patch", finetune.get("patch_path")), ("selection", selection.get("selection_path")), ("evaluated answers", evaluation.get("outputs_path"))):
        if not path or not Path(path).exists():
            raise InputError(f"register: {key} {path} does not exist; re-run the stage that writes it")


def _log_patched_model(run_id: str, base_ref: Mapping, model: Mapping, finetune: Mapping, selection: Mapping, evaluation: Mapping, example):
    """``log_model`` from code into ``run_id`` (the caller has set the global URI): the patch, the
    selection and ``base.json`` (the base reference) as artifacts; generation settings as model config."""
    import mlflow

    generation = dict(evaluation.get("generation", {}))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        base_json = Path(tmp) / "base.json"
        base_json.write_text(json.dumps(dict(base_ref), indent=2), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"patch": finetune["patch_path"], "selection": selection["selection_path"], "base": str(base_json)},
            pip_requirements=_pip_requirements(),
            model_config={**generation, "model": dict(evaluation.get("model_load", {}))},
            signature=_signature(generation),
            input_example=example,
            tags={"base.kind": base_ref["kind"], "model.fingerprint": model["fingerprint"]},
        )


def _input_example(frame):
    """One benign evaluation prompt (never an unsafe one) as the model's input example."""
    import pandas as pd

    safe = frame[frame["label"] == "safe"]
    return pd.DataFrame({"prompt": (safe if len(safe) else frame)["prompt"].head(1).tolist()})


def _describe_model(uri: str, run_id: str, model_id: str, model, selection, evaluation, frames) -> tuple[dict[str, str], dict[str, float]]:
    """Metrics (with intervals, linked to the evaluation set) on the model and the run, the expert table,
    and the cached per-prompt results; returns the version's evaluation tags and the metrics."""
    import pandas as pd

    from steermoe.promotion import evaluation_key

    client = _client(uri)
    eval_set = evaluation.get("eval_set", {})
    eval_fp = eval_set.get("fingerprint", "unknown")
    metrics = _model_metrics(evaluation)
    log_model_metrics(uri, run_id, model_id, metrics, dataset=_log_eval_set(uri, run_id, model_id, frames["model"], eval_fp))
    client.log_table(run_id, pd.DataFrame(selection.get("experts", []), columns=["layer", "expert"]), "experts.json")
    key = evaluation_key(eval_fp, eval_set.get("settings", {}), model["fingerprint"])
    return evaluation_tags(key, _log_evaluation_frames(client, run_id, key, frames), eval_fp), metrics


def register_candidate(tracking_cfg, *, run, model, prompts, selection, finetune, evaluation) -> dict:
    """Log the patch as an MLflow model from code (``registered_model.py``; signature, input example, base
    reference) in a ``register`` run under the pipeline run, with its metrics and intervals on the model
    and the run; register it as a new version of ``tracking_cfg.registered_model`` with fingerprint and
    lineage tags and the per-prompt results promotion reuses; point ``challenger`` at it.

    All or nothing: if any step fails, the version (and the run) are removed before re-raising (base
    weights logged on the way stay: they are complete and the next registration reuses them). Idempotent: a
    candidate (same base, same patch bytes, same evaluation) that already has a version, because a killed run
    registered it before its result was saved, gets that version back (and ``challenger``), never a second.
    """
    from steermoe.failpoints import failpoint

    _check_inputs(finetune, selection, evaluation)
    uri, name = run["uri"], tracking_cfg.registered_model
    client = _client(uri)
    candidate = candidate_id(model, finetune, _model_metrics(evaluation), evaluation.get("key"))
    existing = _version_of_candidate(client, name, candidate)
    if existing is not None:
        client.set_registered_model_alias(name, CHALLENGER, existing.version)
        return _registered(name, existing.version, uri, existing.run_id, getattr(existing, "model_id", None))
    child = client.create_run(run["experiment_id"], run_name="register", tags={"mlflow.parentRunId": run["run_id"], "steermoe.stage": "register"})
    run_id, version = child.info.run_id, None
    # The fluent API (log_model, and resolving the logged model when registering it) needs the global URI.
    with _global_uri(uri):
        try:
            base_ref = base_reference(getattr(tracking_cfg, "base_reference", "auto"), model, uri=uri, experiment_id=run["experiment_id"])
            frames = _candidate_frames(evaluation)
            info = _log_patched_model(run_id, base_ref, model, finetune, selection, evaluation, _input_example(frames["model"]))
            eval_tags, metrics = _describe_model(uri, run_id, info.model_id, model, selection, evaluation, frames)
            tags = {**_lineage(client, run, model, prompts, selection), **eval_tags, "base.kind": base_ref["kind"], "base.reference": _describe(base_ref), "metrics": json.dumps(metrics)[:_PARAM_MAX], CANDIDATE_TAG: candidate}
            client.set_logged_model_tags(info.model_id, {k: v for k, v in tags.items() if k.startswith(("lineage.", "prompts.", "selection.", "base."))})
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name)
            version = client.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id).version
            failpoint("register.version_created")
            client.set_registered_model_alias(name, CHALLENGER, version)
            _log(client, run_id, tags={"registered_version": version, "experts": json.dumps(selection.get("experts", []))})
            client.set_terminated(run_id, "FINISHED")
        except BaseException:
            if version is not None:
                client.delete_model_version(name, version)
            client.delete_run(run_id)
            raise
    return _registered(name, version, uri, run_id, info.model_id)


def _registered(name: str, version, uri: str, run_id: str, model_id: str | None) -> dict:
    return {"name": name, "version": str(version), "tracking_uri": uri, "model_uri": f"models:/{name}/{version}", "alias_uri": f"models:/{name}@{CHALLENGER}", "run_id": run_id, "model_id": model_id}


CANDIDATE_TAG = "steermoe.candidate"


def candidate_id(model: Mapping[str, Any], finetune: Mapping[str, Any], metrics: Mapping[str, float], evaluation_key: str | None = None) -> str:
    """What makes a candidate itself: its base model, its patch's tensors and its evaluation (key and numbers)."""
    import hashlib

    from safetensors import safe_open

    from steermoe.finetune.integrity import tensor_digest

    digest = hashlib.sha256(str(model["fingerprint"]).encode())
    # The tensors, not the file bytes: safetensors writes its header in a per-process order.
    with safe_open(str(Path(finetune["patch_path"]) / "experts.safetensors"), "pt") as f:
        for key in sorted(f.keys()):
            digest.update(key.encode() + tensor_digest(f.get_tensor(key)))
    # The evaluation's content key covers its settings (a new judge or bootstrap size is a new candidate record).
    digest.update(json.dumps({"evaluation": evaluation_key, "metrics": dict(metrics)}, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _version_of_candidate(client, name: str, candidate: str):
    versions = client.search_model_versions(f"name = '{name}' and tags.`{CANDIDATE_TAG}` = '{candidate}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


# ---------------------------------------------------------------- versions, cached evaluations, promotion records


def version_exists(uri: str, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client(uri).get_model_version(name, str(version))
        return True
    except MlflowException:
        return False


def get_version(uri: str, name: str, ref: str) -> dict | None:
    """A version by number or alias -> ``{"version", "tags", "metrics", "aliases", "model_id", "run_id"}``; None if absent."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        mv = client.get_model_version(name, ref) if str(ref).isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException:
        return None
    tags = dict(mv.tags)
    return {
        "name": name,
        "version": str(mv.version),
        "tags": tags,
        "metrics": json.loads(tags.get("metrics", "{}")),
        "aliases": list(mv.aliases),
        "model_id": _model_id_of(mv),
        "run_id": mv.run_id,
    }


def _model_id_of(mv) -> str | None:
    """The logged model behind a version (some stores return no ``model_id``; its source names it)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = str(mv.source or "")
    return source[len("models:/") :] if source.startswith("models:/m-") else None


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    _client(uri).set_registered_model_alias(name, alias, str(version))


def read_cached_evaluation(uri: str, version: Mapping[str, Any], key: str, role: str = "model"):
    """The per-prompt results a version recorded for evaluation ``key`` (``role`` ``base``: its base
    model's), or None when it has none: then the caller evaluates it again."""
    import mlflow.artifacts
    import pandas as pd

    tag = f"evaluation.{key}" + ("" if role == "model" else f".{role}")
    if tag not in version["tags"]:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=version["tags"][tag], dst_path=tmp, tracking_uri=uri)
        return pd.read_json(path, lines=True, dtype={"id": str})


def record_evaluation(uri: str, run_id: str, version: Mapping[str, Any], key: str, frames: Mapping[str, Any], metrics: Mapping[str, float], eval_fp: str) -> None:
    """Keep a fresh evaluation of a version: per-prompt results in ``run_id`` (a ``promote`` run), tags on the
    version pointing at them, its metrics on the run and on the version's logged model."""
    client = _client(uri)
    uris = _log_evaluation_frames(client, run_id, f"{key}/v{version['version']}", frames)
    for tag, value in evaluation_tags(key, uris, eval_fp).items():
        client.set_model_version_tag(version["name"], version["version"], tag, value)
    if version.get("model_id"):
        dataset = _log_eval_set(uri, run_id, version["model_id"], frames["model"], eval_fp)
        log_model_metrics(uri, run_id, version["model_id"], metrics, dataset=dataset)


def start_promotion_run(uri: str, experiment: str, name: str, tags: Mapping[str, str]) -> str:
    client = _client(uri)
    run = client.create_run(_experiment_id(client, experiment, uri), run_name=f"promote-{name}", tags={"steermoe.kind": "promotion", **tags})
    return run.info.run_id


def record_promotion(uri: str, run_id: str, name: str, decision: Mapping[str, Any], *, status: str = "FINISHED") -> None:
    """Keep a promotion decision either way: tags on both versions, numbers and ``decision.json`` in the
    ``promote`` run. ``decision`` holds ``promote``, ``reason``, ``reasons``, ``numbers``, ``eval_set``,
    ``challenger`` and ``champion`` (version numbers; champion None when compared with the base)."""
    client = _client(uri)
    verdict = "promoted" if decision["promote"] else "refused"
    numbers = json.dumps(decision.get("numbers", {}), sort_keys=True)
    common = {
        "promotion.decision": verdict,
        "promotion.reason": decision["reason"][:_PARAM_MAX],
        "promotion.eval_set": decision.get("eval_set", ""),
        "promotion.run_id": run_id,
        "promotion.numbers": numbers[:_PARAM_MAX],
    }
    roles = {"challenger": decision["challenger"], "champion": decision.get("champion")}
    for role, version in roles.items():
        if version is None:
            continue
        other = roles["champion" if role == "challenger" else "challenger"]
        tags = {**common, "promotion.role": role, "promotion.against": str(other) if other else decision.get("reference", "base")}
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)
    _log(
        client,
        run_id,
        metrics=_numbers(decision.get("numbers", {})),
        tags={"decision": verdict, "reason": decision["reason"], "eval_set": decision.get("eval_set", ""), "challenger": f"{name}/{roles['challenger']}",
              "champion": f"{name}/{roles['champion']}" if roles["champion"] else decision.get("reference", "base")},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(json.dumps(dict(decision), indent=2, default=str), encoding="utf-8")
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)


def fail_promotion_run(uri: str, run_id: str, error: str) -> None:
    client = _client(uri)
    _log(client, run_id, tags={"error": error[:500]})
    client.set_terminated(run_id, "FAILED")


def download_version(uri: str, version: Mapping[str, Any], dst: str | Path) -> dict[str, Path]:
    """A version's patch and base model as local folders (the base resolved and fingerprint-checked)."""
    import mlflow.artifacts

    source = f"models:/{version['name']}/{version['version']}"
    with _global_uri(uri):
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri))
    import yaml

    artifacts = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]["artifacts"]
    local = {k: root / v["path"] for k, v in artifacts.items()}
    base = json.loads(local["base"].read_text(encoding="utf-8"))
    return {"patch": local["patch"], "base": resolve_base(base, uri), "root": root}


def load_registered(uri: str, model_uri: str):
    """``mlflow.pyfunc.load_model`` against ``uri`` (e.g. ``models:/steermoe-demo@challenger``)."""
    import mlflow.pyfunc

    with _global_uri(uri):
        return mlflow.pyfunc.load_model(model_uri)
