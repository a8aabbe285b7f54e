"""``up``, ``down``, ``status`` and ``logs`` of a local stack (see :mod:`steermoe.stack`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from steermoe.errors import StackError
from steermoe.stack import postgres
from steermoe.stack.layout import DEFAULT_PORTS, SERVICES, WORK_POOL, StackLayout
from steermoe.stack.processes import MARKER, is_member, members, port_in_use, read_pid, spawn, stop, tail
from steermoe.stack.services import CHECKOUT, Service, build_services, client_env, health_checks, urls

__all__ = ["DEFAULT_CONFIG", "ServiceState", "UpResult", "up", "down", "status", "logs", "running_urls"]

DEFAULT_CONFIG = "configs/demo.yaml"
Echo = Callable[[str], None]


@dataclass
class ServiceState:
    """One row of ``steermoe stack status``."""

    name: str
    url: str
    pid: int | None
    state: str  # healthy | unhealthy | stopped | stale pid file


@dataclass
class UpResult:
    services: list[ServiceState]
    seconds: float
    already_running: bool
    started: list[str]


def _quiet(_: str) -> None:
    pass


def _marker(layout: StackLayout) -> str:
    return str(layout.root)


def _new_state(layout: StackLayout, ports: dict[str, int], config_path: str, artifacts: str | None) -> dict:
    return {
        "ports": ports,
        "urls": urls(ports),
        "config_path": config_path,
        "artifacts_destination": artifacts or str(layout.artifacts),
        "checkout": str(CHECKOUT),
        "work_pool": WORK_POOL,
    }


def _resolve_state(layout: StackLayout, ports: dict[str, int | None], config_path: str | None, artifacts: str | None, running: dict) -> dict:
    """The settings of this ``up``: those asked for, else those of the last ``up`` here, else the defaults."""
    old = layout.read_state() or {}
    merged = {name: ports.get(name) or old.get("ports", {}).get(name) or default for name, default in DEFAULT_PORTS.items()}
    state = _new_state(layout, merged, config_path or old.get("config_path") or DEFAULT_CONFIG, artifacts or old.get("artifacts_destination"))
    if running and old:
        changed = [k for k in ("ports", "config_path", "artifacts_destination") if old.get(k) != state[k]]
        if changed:
            raise StackError(f"the stack in {layout.root} is running with other settings ({', '.join(changed)}); `steermoe stack down --dir {layout.root}` first")
    if state["artifacts_destination"].startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise StackError("--artifacts-destination s3://...: MLflow needs boto3 for S3; pip install boto3 (and set MLFLOW_S3_ENDPOINT_URL for MinIO)") from None
    return state


def _live(layout: StackLayout, echo: Echo) -> dict[str, int]:
    """Services whose pid file names a live member; stale pid files (a crashed ``up``) are removed."""
    live = {}
    for name in SERVICES:
        pid_file = layout.pid_file(name)
        pid = read_pid(pid_file)
        if is_member(pid, _marker(layout)):
            live[name] = pid
        elif pid_file.exists():
            pid_file.unlink()
            echo(f"removed the stale pid file of {name} (pid {pid} is not a running process of this stack)")
    return live


def _check_ports(state: dict, live: dict[str, int]) -> None:
    for name, port in state["ports"].items():
        if name not in live and port_in_use(port):
            raise StackError(f"port {port} on 127.0.0.1 ({name}) is already in use by another process; stop it or choose another port with --{name}-port")


def _failure(service: Service, layout: StackLayout, what: str) -> StackError:
    log = layout.log_file(service.name)
    lines = "\n".join(f"    {line}" for line in tail(log, 12))
    return StackError(f"{service.name} {what}; last lines of {log}:\n{lines}" if lines else f"{service.name} {what}; its log {log} is empty")


def _wait_healthy(service: Service, proc: subprocess.Popen | None, pid: int, layout: StackLayout, timeout: float) -> float:
    start = time.monotonic()
    while True:
        if service.healthy():
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise _failure(service, layout, f"exited with code {proc.returncode} before becoming healthy")
        if proc is None and not is_member(pid, _marker(layout)):
            raise _failure(service, layout, "stopped")
        if time.monotonic() - start > timeout:
            raise _failure(service, layout, f"did not become healthy within {timeout:g} s ({service.url or 'no URL'})")
        time.sleep(0.5)


def _start(service: Service, layout: StackLayout) -> subprocess.Popen:
    proc = spawn(service.command, env=service.env, log=layout.log_file(service.name), marker=_marker(layout), cwd=service.cwd, user=service.user)
    layout.pid_file(service.name).write_text(f"{proc.pid}\n")
    return proc


def _register_deployments(layout: StackLayout, state: dict, timeout: float) -> None:
    """``steermoe deploy``: the three deployments on the process pool (idempotent: updates them in place)."""
    log = layout.log_file("deploy")
    cmd = [sys.executable, "-m", "steermoe", "deploy", "--work-pool", WORK_POOL, "--config-path", state["config_path"]]
    env = {**client_env(layout, state), MARKER: _marker(layout)}
    with open(log, "ab") as out:
        try:
            done = subprocess.run(cmd, env=env, cwd=CHECKOUT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise StackError(f"registering the deployments took longer than {timeout:g} s; see {log}") from None
    if done.returncode != 0:
        lines = "\n".join(f"    {line}" for line in tail(log, 12))
        raise StackError(f"registering the deployments failed (exit {done.returncode}); last lines of {log}:\n{lines}")


def up(
    layout: StackLayout,
    *,
    ports: dict[str, int | None] | None = None,
    config_path: str | None = None,
    artifacts_destination: str | None = None,
    timeout: float = 90.0,
    echo: Echo = _quiet,
) -> UpResult:
    """Start whatever of the stack is not running and wait until every service is healthy.

    Idempotent: a running stack is left as it is. On failure the services this call started are stopped
    again and the error names the service and ends with the last lines of its log.
    """
    t0 = time.monotonic()
    layout.make()
    live = _live(layout, echo)
    state = _resolve_state(layout, ports or {}, config_path, artifacts_destination, live)
    bin_dir = postgres.find_binaries()
    _check_ports(state, live)
    postgres.write_pgpass(layout, state["ports"]["postgres"])
    layout.write_state(state)
    checks = health_checks(layout, state)
    if len(live) == len(SERVICES) and all(checks[name]() for name in SERVICES):
        return UpResult(status(layout), time.monotonic() - t0, True, [])

    pg_data = postgres.data_dir(layout) if "postgres" in live else postgres.ensure_cluster(layout, bin_dir)
    services = build_services(layout, state, bin_dir, pg_data)
    started: list[str] = []
    try:
        for group in (("postgres",), ("prefect", "mlflow"), ("worker",)):
            if "worker" in group and started:
                _register_deployments(layout, state, timeout)
                echo("deployments registered: safety-pipeline, retrain-if-prompts-changed, promote")
            procs = {}
            for name in group:  # the servers of one group start side by side
                if name not in live:
                    if name == "postgres":
                        postgres.remove_stale_lock(pg_data)
                    procs[name] = _start(services[name], layout)
                    started.append(name)
            for name in group:
                seconds = _wait_healthy(services[name], procs.get(name), live.get(name) or procs[name].pid, layout, timeout)
                echo(f"{name:<9} healthy after {seconds:4.1f} s  {services[name].url}" if name in procs else f"{name:<9} was already running")
                if name == "postgres":
                    postgres.ensure_databases(state["ports"]["postgres"], layout.pgpass_file)
    except BaseException:
        for name in reversed(started):
            _stop_service(layout, name)
        raise
    return UpResult(status(layout), time.monotonic() - t0, False, started)


def _stop_service(layout: StackLayout, name: str) -> bool:
    pid = read_pid(layout.pid_file(name))
    # SIGINT is Postgres' "fast" shutdown; its SIGTERM waits for every client to leave.
    first = signal.SIGINT if name == "postgres" else signal.SIGTERM
    # The worker waits for the API on SIGTERM and may linger; Postgres' fast shutdown takes a moment.
    killed = stop(pid, _marker(layout), first_signal=first, grace=20.0 if name == "postgres" else 10.0) if pid else False
    layout.pid_file(name).unlink(missing_ok=True)
    return killed


def down(layout: StackLayout, *, delete_data: bool = False, echo: Echo = _quiet) -> list[str]:
    """Stop every process of the stack (services first, worker first among them, then anything else that
    carries the stack's marker, e.g. flow runs in flight). Data stays unless ``delete_data``."""
    marker = _marker(layout)
    live = _live(layout, echo) if layout.root.exists() else {}
    stray = [p for p in members(marker) if p not in live.values()]
    if not live and not stray and not delete_data:
        raise StackError(f"no stack is running in {layout.root}; nothing to stop (start one with `steermoe stack up`)")
    stopped = []
    for name in reversed(SERVICES):
        if name in live:
            killed = _stop_service(layout, name)
            stopped.append(name)
            echo(f"stopped {name} (pid {live[name]}{', killed after the grace period' if killed else ''})")
    for pid in members(marker):  # flow runs the worker started, or orphans of a crashed up
        stop(pid, marker, grace=5.0)
        echo(f"stopped process {pid} of the stack")
    left = members(marker)
    if left:
        raise StackError(f"processes {left} of the stack in {layout.root} did not stop; kill them by pid")
    if delete_data:
        _delete(layout)
        echo(f"deleted {layout.root}")
    return stopped


def _delete(layout: StackLayout) -> None:
    link = layout.postgres_link
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)
    shutil.rmtree(layout.root, ignore_errors=True)


def status(layout: StackLayout) -> list[ServiceState]:
    """Service, URL, pid and health of each service of the stack folder."""
    state = layout.read_state()
    if state is None:
        raise StackError(f"no stack in {layout.root}; start one with `steermoe stack up`")
    checks = health_checks(layout, state)
    shown = urls(state["ports"])
    rows = []
    for name in SERVICES:
        pid = read_pid(layout.pid_file(name))
        if is_member(pid, _marker(layout)):
            health = "healthy" if checks[name]() else "unhealthy"
        else:
            health = "stale pid file" if pid else "stopped"
        rows.append(ServiceState(name, shown[name], pid, health))
    return rows


def logs(layout: StackLayout, service: str | None = None, lines: int = 40) -> dict[str, list[str]]:
    """The last ``lines`` lines of each service's log (and of the deployment registration)."""
    names = [*SERVICES, "deploy"]
    if not layout.logs.is_dir():
        raise StackError(f"no stack in {layout.root}; start one with `steermoe stack up`")
    if service is not None and service not in names:
        raise StackError(f"unknown service {service!r}; choose one of {', '.join(names)}")
    return {name: tail(layout.log_file(name), lines) for name in ([service] if service else names)}


def running_urls(layout: StackLayout | None = None) -> dict[str, str] | None:
    """The URLs of the stack when its Prefect and MLflow servers answer, else None (cheap: two local requests)."""
    layout = layout or StackLayout.at()
    state = layout.read_state()
    if state is None:
        return None
    checks = health_checks(layout, state)
    return state["urls"] if checks["prefect"]() and checks["mlflow"]() else None
