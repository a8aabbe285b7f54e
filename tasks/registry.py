"""Registry tasks: promotion and the retrain check. Never cached (the registry changes under them);
retried, since they only talk to the tracking server and are safe to repeat."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from steermoe import stages
from steermoe.config import RunConfig

__all__ = ["promote_candidate", "check_prompts"]

_RETRY = {"cache_policy": NO_CACHE, "retries": 3, "retry_delay_seconds": 2, "persist_result": False}


@task(name="promote-candidate", **_RETRY)
def promote_candidate(config: RunConfig, candidate: str) -> dict:
    """Evaluate ``candidate`` and the champion head to head; move ``champion`` if the challenger wins."""
    return stages.promote_stage(config, candidate)


@task(name="check-prompts", **_RETRY)
def check_prompts(config: RunConfig) -> dict:
    """Today's prompt-set fingerprint vs the one recorded on the champion."""
    return stages.retrain_check_stage(config.prompts, config.tracking, config.cache_dir)
