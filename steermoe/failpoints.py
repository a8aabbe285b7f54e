"""Named crash points for the kill-and-resume tests: ``STEERMOE_KILL_AT=<name>[:<n>]`` makes the process
SIGKILL itself the n-th time (default: first) it passes ``<name>``, exactly as an OOM killer or a
preempted node would: no ``finally``, no ``atexit``, no flushing. Unset (always, outside tests), a
failpoint is one dictionary lookup."""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("STEERMOE_KILL_AT")
    if not spec or spec.partition(":")[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
