"""One run at a time per stage key: concurrent pipeline runs that share a cache dir never write the same
stage folder at once, and the second one reuses what the first finished instead of doing it again.

Each stage call takes an exclusive ``flock`` on ``<cache_dir>/locks/<stage>-<key>.lock`` (the kernel drops
it when a process dies, even by SIGKILL, so a killed run never leaves a stale lock). Holding it, the call
looks for ``<stage>-<key>.done.json``, the record a finished call left: if its files (and registered
version) still exist it is returned as is; otherwise the stage runs and the record is written
atomically, and one line is appended to ``<stage>-<key>.computed`` (an audit trail of who computed what).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from steermoe.files import file_lock, write_text_atomic

__all__ = ["locks_dir", "exclusive_stage"]

log = logging.getLogger(__name__)


def locks_dir(cache_dir: str | Path) -> Path:
    path = Path(cache_dir).expanduser() / "locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _finished_record(path: Path):
    from tasks.caching import record_is_valid

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record_is_valid(record) else None


def exclusive_stage(stage: str, fn: Callable) -> Callable:
    """``fn`` (a stage task body taking ``config`` first) run under its stage-key lock, reusing a finished record."""
    from tasks.caching import stage_key

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        inputs = signature.bind(*args, **kwargs).arguments
        key = stage_key(stage, inputs)
        base = locks_dir(inputs["config"].cache_dir) / f"{stage}-{key}"
        done = base.with_name(base.name + ".done.json")
        with file_lock(base.with_name(base.name + ".lock"), stage):
            record = _finished_record(done)
            if record is not None:
                log.warning("%s: reusing the result another run finished (%s)", stage, done)
                return record
            record = fn(*args, **kwargs)
            write_text_atomic(done, json.dumps(record, sort_keys=True, default=str))
            with open(base.with_name(base.name + ".computed"), "a", encoding="utf-8") as audit:
                audit.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()}) + "\n")
            return record

    return guarded
