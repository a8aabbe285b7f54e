"""``safety_pipeline``: validate prompts -> routing -> risk difference -> selection -> fine-tune ->
evaluate -> register, each stage a cached task, tracked as nested MLflow runs under one parent run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow

from steermoe.config import RunConfig, load_config
from steermoe.errors import ConfigError
from steermoe.evaluation.benchmark_report import benchmark_metrics
from steermoe.stage_specs import STAGE_SPECS, STAGES
from tasks import artifacts
from tasks import stages as t
from tasks.caching import result_storage
from tasks.logs import quiet_user_errors
from tasks.tracking import finish_tracking, start_tracking, track_stage

quiet_user_errors()  # a bad-input failure logs its one line, not a traceback

__all__ = ["safety_pipeline", "resolve_config"]


def resolve_config(config: Optional[RunConfig], config_path: Optional[str], overrides: Optional[list[str]]) -> RunConfig:
    """One RunConfig from either a config object or a YAML path (+ overrides), never both."""
    if config is not None and (config_path or overrides):
        raise ConfigError("give either config or config_path/overrides, not both")
    if config is None:
        config = load_config(config_path, overrides or [])
    return config


class _Runner:
    """Runs one stage task with the run's config, recording its state name, timing and MLflow stage run."""

    def __init__(self, config: RunConfig, run: dict):
        self.config, self.run = config, run
        self.storage = result_storage(config.cache_dir)
        self.states: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.records: dict[str, dict] = {}

    def __call__(self, stage_task, *args: Any) -> dict:
        stage = stage_task.fn.__name__
        start = time.perf_counter()
        state = stage_task.with_options(result_storage=self.storage)(self.config, *args, return_state=True)
        self.states[stage] = state.name
        record = state.result()  # re-raises the stage's error: the flow stops here
        self.seconds[stage] = round(time.perf_counter() - start, 2)
        self.records[stage] = record
        track_stage(self.run, stage, record, state.name, STAGE_SPECS[stage].config_values(self.config))
        return record


@flow(name="safety-pipeline", log_prints=True)
def safety_pipeline(config: Optional[RunConfig] = None, config_path: Optional[str] = None, overrides: Optional[list[str]] = None) -> dict:
    """Find the experts that carry unsafe behaviour, fine-tune only those, evaluate and register the result.

    Args:
        config: The full run configuration (every field documented); empty means the built-in demo.
        config_path: A run-config YAML readable by the worker, instead of ``config``.
        overrides: ``key.path=value`` overrides applied to ``config_path`` (e.g. ``finetune.max_steps=20``).
    """
    config = resolve_config(config, config_path, overrides)
    out_root = str((Path(config.output_dir) / config.run_name).resolve())
    run = start_tracking(config)
    step = _Runner(config, run)
    try:
        prompts = step(t.validate_prompts, out_root)
        artifacts.publish_validation_report(_report(prompts))
        model = step(t.prepare_model)
        routing = step(t.collect_routing, prompts, model, out_root)
        risk = step(t.risk_difference, routing, out_root)
        artifacts.publish_risk_table(risk)
        selection = step(t.select_experts, risk, out_root)
        artifacts.publish_selection(selection)
        tuned = step(t.finetune, prompts, model, routing, selection, out_root)
        evaluation = step(t.evaluate, prompts, model, selection, tuned, out_root)
        artifacts.publish_comparison(evaluation)
        artifacts.publish_benchmarks(evaluation)
        registered = step(t.register, run, model, prompts, selection, tuned, evaluation)
    except BaseException as e:
        failed = next((s for s in STAGES if s not in step.records), "unknown")
        finish_tracking(run, "FAILED", tags={"failed_stage": failed, "error": str(e)[:500]})
        raise
    finish_tracking(
        run,
        "FINISHED",
        metrics={**_flat(evaluation.get("metrics", {})), **benchmark_metrics(evaluation)},
        tags={"prompts.fingerprint": prompts["fingerprint"], "model.fingerprint": model["fingerprint"], "registered_version": registered["version"]},
    )
    return {
        "run_name": config.run_name,
        "out_root": out_root,
        "states": step.states,
        "seconds": step.seconds,
        "records": step.records,
        "tracking": run,
        "registered": registered,
    }


def _report(prompts: dict) -> dict:
    import json

    return json.loads(Path(prompts["report_path"]).read_text(encoding="utf-8"))


def _flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out
