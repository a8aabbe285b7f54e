"""``promote``: challenger and champion evaluated head to head on the current evaluation set; the
``champion`` alias moves only if the challenger wins beyond the noise (decision recorded either way)."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from flows.pipeline import resolve_config
from steermoe.config import RunConfig
from tasks.artifacts import publish_decision
from tasks.registry import promote_candidate

__all__ = ["promote"]


@flow(name="promote", log_prints=True)
def promote(
    candidate: str = "challenger",
    config: Optional[RunConfig] = None,
    config_path: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> dict:
    """Promote a registered candidate to ``champion`` if, on the current evaluation set, it refuses more
    unsafe prompts by the configured margin with a paired bootstrap interval above 0, over-refuses at most
    the tolerance more, and keeps utility within its tolerance. Versions whose recorded results come from
    another evaluation set are evaluated again first; the others' results are reused.

    Args:
        candidate: A version number of the registered model, or an alias (default ``challenger``).
        config: Run configuration: ``tracking`` (URI, model name, margin, tolerances), ``prompts`` and
            ``evaluation`` (the current evaluation set and how to evaluate on it), ``model`` (dtype, device).
        config_path: A run-config YAML readable by the worker, instead of ``config``.
        overrides: ``key.path=value`` overrides, e.g. ``tracking.promotion_margin=0.1``.
    """
    config = resolve_config(config, config_path, overrides)
    result = promote_candidate(config, candidate)
    publish_decision(result["decision"], f"{result['name']} v{result['version']}")
    print(("promoted" if result["promoted"] else "not promoted") + f": {result['name']} v{result['version']}")
    return result
