"""Prefect logs a failed task or flow with its traceback; for a user error (bad data, bad config, an
unreachable server) the one-line message is the whole story, so the traceback is dropped there.
Bugs (any other exception) keep theirs."""

from __future__ import annotations

import logging

from steermoe.errors import SteerMoEError

__all__ = ["quiet_user_errors"]

_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.task_engine", "prefect.flow_engine")


class _DropUserTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SteerMoEError):
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = _DropUserTracebacks()


def quiet_user_errors() -> None:
    """Install the filter on Prefect's run loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
