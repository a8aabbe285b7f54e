"""``promote``: move the ``champion`` alias to a candidate only if it passes the promotion rule."""

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
    """Promote a registered candidate to ``champion`` if it refuses more unsafe prompts by the configured
    margin, over-refuses at most the tolerance more, and keeps utility within its tolerance.

    Args:
        candidate: A version number of the registered model, or an alias (default ``challenger``).
        config: Run configuration; only ``tracking`` (URI, model name, margin, tolerances) and ``cache_dir`` are used.
        config_path: A run-config YAML readable by the worker, instead of ``config``.
        overrides: ``key.path=value`` overrides, e.g. ``tracking.promotion_margin=0.1``.
    """
    config = resolve_config(config, config_path, overrides)
    result = promote_candidate(config, candidate)
    publish_decision(result["decision"], f"{result['name']} v{result['version']}")
    print(("promoted" if result["promoted"] else "not promoted") + f": {result['name']} v{result['version']}")
    return result
