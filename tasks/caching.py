"""Content-keyed caching for the stage tasks.

A stage's cache key is a hash of what determines its output and nothing else:

- the stage's code version (:func:`steermoe.stages.code_version`: the stage function and the library
  files it runs),
- the config keys it reads (:data:`STAGE_SECTIONS`; e.g. only ``evaluation.*`` for evaluation),
- the identity of its inputs: the ``key`` of each upstream record, which is the prompt-set fingerprint
  for the validated prompts and the weights fingerprint for the model, so a moved folder with the same
  content still hits while one changed prompt misses from validation on.

A cached record whose files were deleted (or whose registered version is gone) is stale: the key then
moves to a successor derived from the stale record, so the task runs again and re-creates what is
missing, while an intact record is reused (state ``Cached``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from steermoe import stages

__all__ = ["STAGE_SECTIONS", "StageCache", "stage_key", "stage_dir", "record_is_valid", "result_storage"]

log = logging.getLogger(__name__)

# Config keys each stage reads: its cache key covers these and no other settings.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "validate_prompts": ("prompts",),
    "prepare_model": ("model.source", "model.demo_arch"),
    "collect_routing": ("model.dtype", "generation", "routing"),
    "risk_difference": ("analysis",),
    "select_experts": ("selection",),
    "finetune": ("model.dtype", "generation.chat_template_kwargs", "finetune"),
    "evaluate": ("model.dtype", "generation.chat_template_kwargs", "evaluation"),
    "register": ("tracking.registered_model", "tracking.log_base_weights"),
}
# Task parameters that never enter a key (where outputs go; which MLflow run records them).
_NOT_KEYED = {"out_root", "run", "cache_dir"}


def _pick(config: BaseModel, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def stage_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """The content key of one stage run, from the task's parameters (see the module docstring)."""
    parts: dict[str, Any] = {"stage": stage, "code": stages.code_version(stage)}
    for name, value in sorted(inputs.items()):
        if name in _NOT_KEYED:
            continue
        if isinstance(value, BaseModel) and hasattr(value, "prompts"):  # the RunConfig: only this stage's keys
            parts[name] = {k: _pick(value, k) for k in STAGE_SECTIONS[stage]}
            if stage == "validate_prompts":
                parts["prompts.fingerprint"] = stages.prompt_set_fingerprint(value.prompts)
            if stage == "prepare_model" and value.model.source != "demo" and Path(value.model.source).exists():
                from steermoe.modeling import model_fingerprint

                parts["model.fingerprint"] = model_fingerprint(Path(value.model.source))
            if stage == "register":
                from steermoe.tracking import resolve_tracking_uri

                parts["tracking_uri"] = resolve_tracking_uri(value.tracking, value.cache_dir)
        elif isinstance(value, Mapping) and "key" in value:
            parts[name] = value["key"]
        else:
            parts[name] = value
    return _hash(parts)


def stage_dir(out_root: str | Path, stage: str, key: str) -> Path:
    """Where a stage run writes: content-addressed, so a re-run after a deletion rebuilds in place."""
    return Path(out_root) / stage / key[:12]


def _paths(record: Any):
    if isinstance(record, Mapping):
        for k, v in record.items():
            if k.endswith("_path") and isinstance(v, str):
                yield v
            else:
                yield from _paths(v)


def record_is_valid(record: Any) -> bool:
    """A cached record is usable only if every ``*_path`` it names still exists (and its model version,
    for registrations)."""
    if not isinstance(record, Mapping):
        return False
    if not all(Path(p).exists() for p in _paths(record)):
        return False
    if {"name", "version", "tracking_uri"} <= set(record):
        from steermoe.tracking import version_exists

        return version_exists(record["tracking_uri"], record["name"], record["version"])
    return True


@dataclass
class StageCache(CachePolicy):
    """Cache policy of one stage task: :func:`stage_key`, moved on when the cached record is stale."""

    stage: str = ""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        key = stage_key(self.stage, inputs)
        store = task_ctx.result_store if task_ctx else None
        for _ in range(32):
            if store is None or not store.exists(key):
                return key
            try:
                record = store.read(key).result
            except Exception:  # an unreadable record is as good as a missing one
                record = None
            if record_is_valid(record):
                return key
            log.info("%s: cached result %s is stale (files or version gone); running again", self.stage, key)
            key = _hash(key, "stale", record)
        return key


def result_storage(cache_dir: str | Path) -> Path:
    """Where task results persist: ``$PREFECT_RESULTS_LOCAL_STORAGE_PATH`` if set, else ``<cache_dir>/prefect-results``."""
    import os

    explicit = os.environ.get("PREFECT_RESULTS_LOCAL_STORAGE_PATH")
    path = Path(explicit) if explicit else Path(cache_dir).expanduser() / "prefect-results"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
