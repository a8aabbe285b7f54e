"""Detached service processes: start, recognise and stop them.

Every process a stack starts carries ``STEERMOE_STACK_MEMBER=<stack folder>`` in its environment, and
so do its children (flow runs of the worker, uvicorn workers, Postgres backends). A pid file names a
live member only if that process still carries the marker, so a pid reused by an unrelated process is
never signalled, and ``down`` can find and stop every member, including children that left their
parent's process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["MARKER", "spawn", "read_pid", "is_member", "members", "stop", "port_in_use", "tail"]

MARKER = "STEERMOE_STACK_MEMBER"


def spawn(cmd: Sequence[str], *, env: Mapping[str, str], log: Path, marker: str, cwd: Path | None = None, user: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (so one signal reaches its process group), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd),
            env={**env, MARKER: marker},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def is_member(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` is a live process of the stack whose marker is ``marker``."""
    if not pid or _is_zombie(pid):
        return False
    return f"{MARKER}={marker}".encode() in _environ(pid).split(b"\0")


def members(marker: str) -> list[int]:
    """Every live process carrying this stack's marker."""
    own = os.getpid()
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != own]
    return sorted(p for p in pids if is_member(p, marker))


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (every service is started as one), else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(pid: int, marker: str, *, first_signal: int = signal.SIGTERM, grace: float = 15.0) -> bool:
    """Signal the process group led by ``pid`` and wait; kill it if it is still there after ``grace`` seconds.
    Returns True if it had to be killed."""
    if not is_member(pid, marker):
        return False
    _signal_group(pid, first_signal)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_member(pid, marker):
            return False
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)
    for _ in range(50):
        if not is_member(pid, marker):
            break
        time.sleep(0.1)
    return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last ``lines`` lines of a log file (empty when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]
