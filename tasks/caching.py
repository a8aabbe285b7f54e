"""Content-keyed caching for the stage tasks.

A stage's cache key is a hash of what determines its output and nothing else:

- the stage's code version (:mod:`steermoe.code_version`: the stage function and every project module
  it reaches, found by walking imports, not listed by hand),
- the config keys its spec says it reads (:mod:`steermoe.stage_specs`; e.g. only ``evaluation.*``
  and the model-loading keys for evaluation),
- the identity of its inputs: the ``key`` of each upstream record, which is the prompt-set fingerprint
  for the validated prompts and the weights fingerprint for the model, so a moved folder with the same
  content still hits while one changed prompt misses from validation on.

A cached record whose files were deleted (or whose registered version is gone) is stale: the key then
moves to a successor derived from the stale record, so the task runs again and re-creates what is
missing, while an intact record is reused (state ``Cached``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from steermoe.config import RunConfig
from steermoe.stage_specs import STAGE_SPECS

__all__ = ["STAGE_SECTIONS", "StageCache", "register_task_source", "stage_key", "stage_dir", "record_is_valid", "result_storage"]

log = logging.getLogger(__name__)

# Config keys each stage reads (derived from the stage specs; kept for readers of the old name).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {name: spec.reads for name, spec in STAGE_SPECS.items()}
# Task parameters that never enter a key (where outputs go; which MLflow run records them).
_NOT_KEYED = {"out_root", "run", "cache_dir"}


def _hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


_TASK_SOURCES: dict[str, str] = {}


def register_task_source(stage: str, fn) -> None:
    """Make the task wrapper's own source part of ``stage``'s key (it shapes the record too)."""
    _TASK_SOURCES[stage] = inspect.getsource(fn)


def stage_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """The content key of one stage run, from the task's parameters (see the module docstring)."""
    spec = STAGE_SPECS[stage]
    parts: dict[str, Any] = {"stage": stage, "code": spec.code_version(), "task": _TASK_SOURCES.get(stage)}
    for name, value in sorted(inputs.items()):
        if name in _NOT_KEYED:
            continue
        if isinstance(value, RunConfig):  # only the keys this stage reads, and the content they name
            parts[name] = spec.config_values(value)
            parts.update(spec.identity(value) if spec.identity else {})
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
