"""Tasks that talk to MLflow: never cached (every pipeline run gets its own runs), retried (the
tracking server may be briefly unreachable; each call is idempotent or creates a fresh run)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from steermoe import tracking
from steermoe.config import RunConfig

__all__ = ["start_tracking", "track_stage", "finish_tracking"]

_RETRY = {"cache_policy": NO_CACHE, "retries": 3, "retry_delay_seconds": 2, "persist_result": False}


@task(name="start-tracking", **_RETRY)
def start_tracking(config: RunConfig, tags: dict | None = None) -> dict:
    """Open the parent MLflow run of this pipeline run, with the flattened config as params."""
    uri = tracking.resolve_tracking_uri(config.tracking, config.cache_dir)
    return tracking.start_pipeline_run(uri, config.tracking.experiment, config.run_name, config.model_dump(mode="json"), tags)


@task(name="track-stage", **_RETRY)
def track_stage(run: dict, stage: str, record: dict, state: str, params: dict) -> str:
    """A nested MLflow run for one stage: its config keys, numbers and files."""
    return tracking.log_stage(run, stage, record, state=state, params=params)


@task(name="finish-tracking", **_RETRY)
def finish_tracking(run: dict, status: str, metrics: dict | None = None, tags: dict | None = None) -> None:
    tracking.finish_pipeline_run(run, status, metrics, tags)
