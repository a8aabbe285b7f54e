"""Errors that reach a user: one line saying what went wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = ["SteerMoEError", "InputError", "ConfigError", "ValidationFailed", "BitIdentityError", "WorkerFailed"]


class SteerMoEError(Exception):
    """Base class for errors the CLI prints as one line (no traceback)."""

    exit_code = 1


class InputError(SteerMoEError):
    """A file or value supplied by the user cannot be used as given."""

    exit_code = 2


class ConfigError(InputError):
    """The run configuration is invalid; the message names the key path."""


class ValidationFailed(SteerMoEError):
    """A prompt set failed validation; ``report`` holds every failing row."""

    exit_code = 1

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class BitIdentityError(SteerMoEError):
    """A tensor that fine-tuning must leave bit-identical (anything but the selected experts) changed."""

    exit_code = 1


class WorkerFailed(SteerMoEError):
    """A shard could not be computed on a (Ray) worker within its retries; the message names the shard."""

    exit_code = 1
