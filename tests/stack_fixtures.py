"""Helpers of the stack tests: the CLI as a user runs it, free loopback ports, the stack's REST APIs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from steermoe.stack.processes import members

ROOT = Path(__file__).resolve().parents[1]


def has_postgres() -> bool:
    from steermoe.errors import StackError
    from steermoe.stack.postgres import find_binaries

    try:
        find_binaries()
        return True
    except StackError:
        return False


needs_postgres = pytest.mark.skipif(not has_postgres(), reason="needs the PostgreSQL server binaries (apt-get install postgresql; .ci/run does)")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now (the OS picks them; other agents run servers too)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m steermoe ...`` in a fresh process, run from the checkout (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
    full_env.setdefault("COLUMNS", "200")  # rich tables: keep URLs on one line
    return subprocess.run([sys.executable, "-m", "steermoe", *args], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The error line of a failed command; fails the test unless it is one line without a traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), done.stderr
    return lines[0]


def stack_processes(folder: Path) -> list[int]:
    return members(str(Path(folder).resolve()))


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def rest(url: str, body: dict | None = None, method: str | None = None):
    """JSON in, JSON out, against a loopback server."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with _NO_PROXY.open(req, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else None
