"""``retrain_if_prompts_changed``: the scheduled check. Runs the pipeline only when the prompt sets
differ from those the current champion was trained on, then offers the new candidate for promotion."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from flows.pipeline import resolve_config, safety_pipeline
from flows.promotion import promote
from steermoe.config import RunConfig
from tasks.registry import check_prompts

__all__ = ["retrain_if_prompts_changed"]


@flow(name="retrain-if-prompts-changed", log_prints=True)
def retrain_if_prompts_changed(
    config: Optional[RunConfig] = None,
    config_path: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    promote_after: bool = True,
) -> dict:
    """Retrain when today's prompt-set fingerprint differs from the champion's (or there is no champion).

    Args:
        config: Run configuration of the pipeline to run when retraining.
        config_path: A run-config YAML readable by the worker, instead of ``config``.
        overrides: ``key.path=value`` overrides applied to ``config_path``.
        promote_after: Offer the new candidate to ``promote`` right after registering it.
    """
    config = resolve_config(config, config_path, overrides)
    check = check_prompts(config)
    if not check["changed"]:
        print(f"skipped: {check['reason']} (fingerprint {check['fingerprint']}, champion v{check['champion_version']})")
        return {"retrained": False, "check": check}
    print(f"retraining: {check['reason']} ({check['champion_fingerprint']} -> {check['fingerprint']})")
    summary = safety_pipeline(config=config)
    result = {"retrained": True, "check": check, "pipeline": summary}
    if promote_after:
        result["promotion"] = promote(candidate=summary["registered"]["version"], config=config)
    return result
