"""The four services of a local stack, each one row: how to start it, what it listens on, how to tell
it is healthy. Prefect and MLflow are started as ``python -m ...`` of this interpreter, never imported.

- ``postgres``: see :mod:`steermoe.stack.postgres`.
- ``prefect``: ``prefect server start`` on the ``prefect`` database; the UI and API on loopback.
- ``mlflow``: ``mlflow server --workers 1`` on the ``mlflow`` database, proxying artifacts to a local
  folder or an ``s3://`` URI; its huey job consumers (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, only
  needed for GenAI jobs) are off unless the environment turns them on.
- ``worker``: a Prefect process worker on the ``steermoe-process`` pool, running flow runs in this checkout.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from steermoe.stack import postgres
from steermoe.stack.layout import WORK_POOL, StackLayout

__all__ = ["CHECKOUT", "WORKER_NAME", "Service", "urls", "health_checks", "build_services", "client_env", "http_ok"]

CHECKOUT = Path(__file__).resolve().parents[2]  # where flows/ and configs/ live: the worker's working directory
WORKER_NAME = "steermoe-stack"
# Settings of the caller that would point a service at something else; the stack sets its own.
_REDIRECTS = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_HOME")


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]
    url: str = ""
    cwd: Path | None = None
    user: str | None = None


def urls(ports: dict[str, int]) -> dict[str, str]:
    """What a user (or the CLI) points at: the UIs, the Prefect API, the Postgres address, the worker's pool page."""
    prefect = f"http://127.0.0.1:{ports['prefect']}"
    return {
        "postgres": f"postgresql://{postgres.USER}@127.0.0.1:{ports['postgres']}",
        "prefect": prefect,
        "prefect_api": f"{prefect}/api",
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
        "worker": f"{prefect}/work-pools/work-pool/{WORK_POOL}",
    }


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str, data: bytes | None = None, timeout: float = 3.0):
    """The decoded JSON (or True) of a 200 answer from a loopback URL; None on anything else."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        with _NO_PROXY.open(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
            body = r.read()
            if r.status != 200:
                return None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        return json.loads(body) if body else True
    except json.JSONDecodeError:
        return True


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REDIRECTS}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    return env


def client_env(layout: StackLayout, state: dict) -> dict[str, str]:
    """The environment of a process that uses the stack (worker, deployment registration)."""
    u = state["urls"]
    path = os.pathsep.join(p for p in (str(CHECKOUT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **_base_env(),
        "PREFECT_HOME": str(layout.prefect_home),
        "PREFECT_API_URL": u["prefect_api"],
        "MLFLOW_TRACKING_URI": u["mlflow"],
        "PYTHONPATH": path,  # flow runs import the steermoe of this checkout
        "STEERMOE_ROOT": str(CHECKOUT),
    }


def _worker_online(api: str, started: Path) -> bool:
    """Our worker is ONLINE and has sent a heartbeat since it was started (the pool remembers workers
    of an earlier ``up`` as online for a while)."""
    from datetime import datetime

    try:
        since = started.stat().st_mtime
    except FileNotFoundError:
        return False
    workers = http_ok(f"{api}/work_pools/{WORK_POOL}/workers/filter", data=b"{}")
    for w in workers if isinstance(workers, list) else []:
        beat = w.get("last_heartbeat_time")
        if w.get("name") == WORKER_NAME and w.get("status") == "ONLINE" and beat:
            if datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() >= since - 1:
                return True
    return False


def health_checks(layout: StackLayout, state: dict) -> dict[str, Callable[[], bool]]:
    """One check per service: Postgres answers a query with our password, the servers' health
    endpoints answer 200, the worker is ONLINE in its pool."""
    ports, u = state["ports"], state["urls"]
    return {
        "postgres": lambda: postgres.is_ready(ports["postgres"], layout.pgpass_file),
        "prefect": lambda: http_ok(f"{u['prefect_api']}/health") is not None,
        "mlflow": lambda: http_ok(f"{u['mlflow']}/health") is not None,
        "worker": lambda: _worker_online(u["prefect_api"], layout.pid_file("worker")),
    }


def build_services(layout: StackLayout, state: dict, bin_dir: Path, pg_data: Path) -> dict[str, Service]:
    ports, u = state["ports"], state["urls"]
    checks = health_checks(layout, state)
    pgpass = str(layout.pgpass_file)
    python = sys.executable
    db = f"{postgres.USER}@127.0.0.1:{ports['postgres']}"
    prefect_env = {
        **_base_env(),
        "PREFECT_HOME": str(layout.prefect_home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{db}/prefect",
        "PREFECT_API_URL": u["prefect_api"],
        "PREFECT_UI_API_URL": u["prefect_api"],
        "PGPASSFILE": pgpass,
    }
    mlflow_env = {**_base_env(), "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://{db}/mlflow", "PGPASSFILE": pgpass}
    mlflow_env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    worker_env = client_env(layout, state)
    worker_env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    # Flow runs write their outputs in the stack folder, not in whatever checkout the worker runs.
    worker_env.setdefault("STEERMOE_OUTPUT_DIR", str(layout.root / "runs"))
    return {
        "postgres": Service(
            "postgres",
            postgres.command(bin_dir, pg_data, ports["postgres"]),
            {k: v for k, v in _base_env().items() if not k.startswith("PG")},
            checks["postgres"],
            url=u["postgres"],
            cwd=pg_data.parent,
            user=postgres.server_user(),
        ),
        "prefect": Service(
            "prefect",
            [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
            prefect_env,
            checks["prefect"],
            url=u["prefect"],
        ),
        "mlflow": Service(
            "mlflow",
            [
                python, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1",
                "--artifacts-destination", state["artifacts_destination"],
            ],
            mlflow_env,
            checks["mlflow"],
            url=u["mlflow"],
        ),
        "worker": Service(
            "worker",
            [python, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process", "--name", WORKER_NAME],
            worker_env,
            checks["worker"],
            url=u["worker"],
            cwd=CHECKOUT,
        ),
    }
