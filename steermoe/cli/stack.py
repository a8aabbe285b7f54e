"""``steermoe stack up | down | status | logs``: the local Postgres + Prefect + MLflow + worker stack."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from steermoe.cli.app import app, console

__all__ = ["stack_app"]

stack_app = typer.Typer(help="A local team stack without Docker: PostgreSQL, Prefect server, MLflow server and a worker, on loopback.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")

DirOption = typer.Option(None, "--dir", help="Stack folder (default: $STEERMOE_STACK_DIR or <cache>/stack).")


def _layout(folder: Optional[Path]):
    from steermoe.stack import StackLayout

    return StackLayout.at(folder)


def _echo(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _table(rows) -> Table:
    table = Table(title="steermoe stack")
    for col in ("service", "URL", "pid", "healthy"):
        table.add_column(col)
    style = {"healthy": "green", "unhealthy": "red", "stale pid file": "yellow"}
    for r in rows:
        table.add_row(r.name, r.url, str(r.pid or "-"), r.state, style=style.get(r.state))
    return table


@stack_app.command("up")
def up(
    folder: Optional[Path] = DirOption,
    postgres_port: Optional[int] = typer.Option(None, help="PostgreSQL port on 127.0.0.1 (default 5433, or the last up's)."),
    prefect_port: Optional[int] = typer.Option(None, help="Prefect server and UI port (default 4200)."),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow server and UI port (default 5000)."),
    config: Optional[str] = typer.Option(None, "--config", help="Run config the deployments use by default, relative to the checkout (default configs/demo.yaml)."),
    artifacts_destination: Optional[str] = typer.Option(None, help="Where MLflow stores the artifacts it proxies: a folder (default <dir>/mlflow-artifacts) or s3://bucket/prefix."),
    timeout: float = typer.Option(90.0, help="Seconds each service may take to become healthy."),
) -> int:
    """Start the stack (or what of it is not running) and wait until every service is healthy."""
    from steermoe import stack

    layout = _layout(folder)
    ports = {"postgres": postgres_port, "prefect": prefect_port, "mlflow": mlflow_port}
    result = stack.up(layout, ports=ports, config_path=config, artifacts_destination=artifacts_destination, timeout=timeout, echo=_echo)
    console.print(_table(result.services))
    if result.already_running:
        _echo(f"the stack in {layout.root} is already running; nothing to do")
        return 0
    urls = layout.read_state()["urls"]
    _echo(f"stack up in {result.seconds:.1f} s ({layout.root})")
    _echo(f"Prefect UI: {urls['prefect']}   MLflow UI: {urls['mlflow']}")
    _echo("`steermoe run` and `steermoe promote` now use it; other tools: " f"export PREFECT_API_URL={urls['prefect_api']} MLFLOW_TRACKING_URI={urls['mlflow']}")
    return 0


@stack_app.command("down")
def down(
    folder: Optional[Path] = DirOption,
    delete_data: bool = typer.Option(False, "--delete-data", help="Also delete the databases, artifacts and logs (the whole stack folder)."),
) -> int:
    """Stop every process of the stack; its data stays for the next `up` unless --delete-data."""
    from steermoe import stack

    layout = _layout(folder)
    stopped = stack.down(layout, delete_data=delete_data, echo=_echo)
    if stopped:
        _echo(f"stack in {layout.root} is down" + ("" if delete_data else " (data kept)"))
    return 0


@stack_app.command("status")
def status(folder: Optional[Path] = DirOption) -> int:
    """A table of service, URL, pid and health; exit 1 unless every service is healthy."""
    from steermoe import stack

    rows = stack.status(_layout(folder))
    console.print(_table(rows))
    return 0 if all(r.state == "healthy" for r in rows) else 1


@stack_app.command("logs")
def logs(
    service: Optional[str] = typer.Argument(None, help="postgres, prefect, mlflow, worker or deploy (default: all)."),
    folder: Optional[Path] = DirOption,
    lines: int = typer.Option(40, "--lines", "-n", help="Lines per log."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines of one service's log."),
) -> int:
    """The last lines of the services' logs."""
    from steermoe import stack
    from steermoe.errors import StackError

    layout = _layout(folder)
    if follow and service is None:
        raise StackError("logs --follow: name one service (postgres, prefect, mlflow, worker or deploy)")
    for name, text in stack.logs(layout, service, lines).items():
        if service is None:
            console.rule(f"{name}  {layout.log_file(name)}")
        for line in text:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    if follow:
        if not layout.log_file(service).exists():
            raise StackError(f"logs --follow: {layout.log_file(service)} does not exist yet; has {service} been started?")
        _follow(layout.log_file(service))
    return 0


def _follow(path: Path) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(0, 2)
        while True:
            line = f.readline()
            if line:
                console.print(line.rstrip("\n"), highlight=False, markup=False, soft_wrap=True)
            else:
                time.sleep(0.5)
