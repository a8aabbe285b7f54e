"""Errors that reach a user: one line saying what went wrong, where, and how to fix it."""

from __future__ import annotations

import errno

__all__ = ["SteerMoEError", "InputError", "ConfigError", "ValidationFailed", "BitIdentityError", "WorkerFailed", "describe_os_error", "StackError"]


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


_OS_HINTS = {
    errno.ENOSPC: "free space on that disk (or point output_dir / cache_dir / --out elsewhere) and run again; finished stages are reused",
    errno.EDQUOT: "your disk quota is used up; free space or point output_dir / cache_dir elsewhere and run again",
    errno.EFBIG: "the file-size limit (ulimit -f) was reached; raise it or write elsewhere",
    errno.EROFS: "that filesystem is read-only; point output_dir / cache_dir / --out at a writable folder",
    errno.EACCES: "check the folder's permissions, or point output_dir / cache_dir / --out elsewhere",
    errno.ENOENT: "check the path",
}


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error: the file, what went wrong and how to fix it."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    hint = _OS_HINTS.get(e.errno or -1)
    return f"{where}{what}" + (f"; {hint}" if hint else "")


class StackError(SteerMoEError):
    """The local service stack (``steermoe stack``) cannot do what was asked: a port in use, missing
    PostgreSQL binaries, a service that never became healthy, nothing to stop."""

    exit_code = 3
