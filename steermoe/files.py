"""Writing files so that a crash, a kill or a full disk never leaves a half-written one under the final name.

Every artifact a later run (or a cache) trusts is written to a hidden sibling and renamed into place only
once complete; ``os.replace`` is atomic on one filesystem, so readers see the old file or the new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_dir", "write_text_atomic", "file_lock", "file_sha256"]

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (same suffix, so writers that pick the format by suffix
    still work); on success it replaces ``final``, on any failure it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final`` (mode 0755, not mkdtemp's 0700); on success it is renamed
    to ``final`` (which must not exist by then), and on any failure it is removed with what was written in it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def file_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); the kernel releases it when the process
    dies, even by SIGKILL, so a killed holder never leaves a stale lock. Says so while waiting."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another run holds %s; waiting for it", what or path.name, path)
            started = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.warning("%s: lock acquired after %.0f s", what or path.name, time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks so a large weight file is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
