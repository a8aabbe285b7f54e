"""``steermoe run``, ``steermoe promote``, ``steermoe deploy`` and ``steermoe serve``: the Prefect shell.

Prefect and MLflow are imported inside the commands (the library itself never imports Prefect). With no
``PREFECT_API_URL`` set, Prefect runs the flow against a temporary local API; with no
``tracking.mlflow_uri``, MLflow writes to SQLite under the cache dir. So ``steermoe run`` needs no server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from steermoe.cli.app import app, console
from steermoe.cli.prompts import ConfigOption, SetOption

__all__ = ["run", "stages", "evaluation_table", "promote", "deploy", "serve"]

_SHOWN_METRICS = ("refusal_rate", "over_refusal", "utility_loss", "utility_loss_delta", "routing_drift")


def _prefect_ready(cfg=None) -> None:
    """Quiet defaults for a local run (anything the user set wins); a running `steermoe stack` is used;
    the servers it names must answer."""
    from steermoe.servers import check_prefect_api, check_tracking_server
    from steermoe.stack import use_running_stack

    use_running_stack()
    check_prefect_api()
    if cfg is not None:
        check_tracking_server(cfg.tracking)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary API starts a server process; on a busy laptop that can take longer than Prefect's 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _outputs(record: dict) -> str:
    keep = ("fingerprint", "rows", "sequences", "n_experts", "experts", "version")
    parts = [f"{k}={record[k]}" for k in keep if k in record]
    return ", ".join(parts)[:80]


def evaluation_table(metrics: dict[str, dict[str, float]]) -> Table:
    """The run summary's numbers: one row per model."""
    table = Table(title="evaluation (eval split)")
    table.add_column("model")
    shown = [m for m in _SHOWN_METRICS if any(m in v for v in metrics.values())]
    for m in shown:
        table.add_column(m.replace("_", "\n"), justify="right")  # one word a line: whole headers at 80 columns
    for model, values in metrics.items():
        table.add_row(model, *(f"{values[m]:.3f}" if m in values else "-" for m in shown))
    return table


def _summary(summary: dict, flow_run_id: str | None, total_seconds: float) -> None:
    in_stages = sum(summary["seconds"].values())
    stages = Table(title=f"steermoe run '{summary['run_name']}'")
    for col in ("stage", "state", "seconds", "outputs"):
        stages.add_column(col)
    for stage, state in summary["states"].items():
        style = "green" if state == "Cached" else None
        stages.add_row(stage, state, f"{summary['seconds'].get(stage, 0):.1f}", _outputs(summary["records"].get(stage, {})), style=style)
    console.print(stages)
    # Where a first run's time goes: the stages, and the rest (imports, Prefect's temporary server, MLflow's tables).
    spent = f"{total_seconds:.0f} s in all: {in_stages:.0f} s in the stages, {total_seconds - in_stages:.0f} s starting Prefect, MLflow and imports"
    console.print(spent, soft_wrap=True, highlight=False)

    metrics = summary["records"].get("evaluate", {}).get("metrics", {})
    if metrics:
        console.print(evaluation_table(metrics))

    run, reg = summary["tracking"], summary["registered"]
    from steermoe.servers import redact_url

    uri = redact_url(run["uri"])
    lines = [f"outputs:   {summary['out_root']}", f"model:     {reg['alias_uri']} (version {reg['version']})"]
    if uri.startswith("sqlite:"):
        lines.append(f"MLflow:    mlflow ui --backend-store-uri {uri}")
        lines.append(f"           then open http://127.0.0.1:5000/#/experiments/{run['experiment_id']}/runs/{run['run_id']}")
    else:
        lines.append(f"MLflow:    {uri.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}")
    api = os.environ.get("PREFECT_API_URL")
    if api and flow_run_id:
        lines.append(f"Prefect:   {api.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}")
    else:
        lines.append("Prefect:   ran on a temporary API; `prefect server start` and set PREFECT_API_URL to keep runs in the UI")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)  # URIs must stay copyable: never wrapped


@app.command()
def run(config: Optional[Path] = ConfigOption, overrides: Optional[list[str]] = SetOption) -> int:
    """Run the whole pipeline (cached stages) on one config; no server needed."""
    from steermoe.config import load_config

    started = time.perf_counter()
    cfg = load_config(config, overrides or [])
    _prefect_ready(cfg)
    from flows.pipeline import safety_pipeline

    state = safety_pipeline(config=cfg, return_state=True)
    summary = state.result()  # re-raises the failing stage's error (one line for user errors)
    _summary(summary, str(state.state_details.flow_run_id) if state.state_details else None, time.perf_counter() - started)
    return 0


@app.command()
def stages(
    markdown: bool = typer.Option(False, "--markdown", help="Print the README's Markdown table instead."),
    modules: bool = typer.Option(False, "--modules", help="Also list the project modules each stage's code version covers."),
) -> int:
    """The pipeline's stages: library function, config keys read, inputs, output and code version."""
    from steermoe.stage_specs import STAGE_SPECS, stage_table

    if markdown:
        print(stage_table())  # plain print: Rich would read the Markdown's brackets as markup
        return 0
    table = Table(title="pipeline stages (steermoe/stage_specs.py; functions in steermoe/stages.py)")
    for col in ("stage", "config keys read", "inputs", "code version"):
        table.add_column(col, overflow="fold")
    for spec in STAGE_SPECS.values():
        table.add_row(spec.name, "\n".join(spec.reads), ", ".join(spec.inputs) or "-", spec.code_version())
    console.print(table)
    for spec in STAGE_SPECS.values() if modules else ():
        console.print(f"{spec.name}: {', '.join(spec.reached_modules())}", highlight=False, markup=False)
    return 0


@app.command()
def promote(
    candidate: str = typer.Option("challenger", help="Version number or alias of the registered model to consider."),
    config: Optional[Path] = ConfigOption,
    overrides: Optional[list[str]] = SetOption,
) -> int:
    """Move the 'champion' alias to the candidate if it passes the promotion rule (decision recorded either way)."""
    from steermoe.config import load_config

    cfg = load_config(config, overrides or [])
    _prefect_ready(cfg)
    from flows.promotion import promote as promote_flow

    result = promote_flow(candidate=candidate, config=cfg)
    d = result["decision"]
    table = Table(title=f"{result['name']} v{result['version']} vs {d['reference']}")
    table.add_column("number")
    table.add_column("value", justify="right")
    for k, v in d["numbers"].items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    for reason in d["reasons"]:
        console.print(f"  {reason}", highlight=False)
    sources = ", ".join(f"{who} {how}" for who, how in d.get("sources", {}).items())
    console.print(f"  evaluation set {d.get('eval_set', '?')}" + (f" ({sources})" if sources else ""), highlight=False, markup=False)
    verdict = Text("promoted to champion", "green") if result["promoted"] else Text("not promoted", "yellow")
    was = f"(was v{result['previous_champion']})" if result["previous_champion"] else ""
    console.print(Text.assemble(verdict, f": models:/{result['name']}@champion {was}"))
    return 0


@app.command()
def deploy(
    work_pool: str = typer.Option("steermoe-process", help="Process work pool to create (if missing) and deploy to."),
    config_path: str = typer.Option("configs/demo.yaml", help="Config YAML the deployments run with by default (readable by the worker)."),
) -> int:
    """Register the pipeline, retrain (cron) and promote deployments with a Prefect server (PREFECT_API_URL, or a running `steermoe stack`)."""
    from steermoe.errors import InputError
    from steermoe.stack import use_running_stack

    use_running_stack()
    if not os.environ.get("PREFECT_API_URL"):
        raise InputError("deploy: PREFECT_API_URL is not set and no `steermoe stack` is running; start one with `steermoe stack up` (or docker compose up), or export PREFECT_API_URL=http://127.0.0.1:4200/api")
    from steermoe.servers import check_prefect_api

    check_prefect_api()
    from deployments.definitions import deploy_all

    for name, deployment_id in deploy_all(work_pool, config_path).items():
        console.print(f"deployed {name} ({deployment_id})")
    console.print(f"start a worker: prefect worker start --pool {work_pool}")
    return 0


@app.command()
def serve(config_path: str = typer.Option("configs/demo.yaml", help="Config YAML the deployments run with by default.")) -> None:
    """Serve the deployments from this process (no work pool needed); runs until interrupted."""
    _prefect_ready()
    from deployments.definitions import serve_all

    serve_all(config_path)
