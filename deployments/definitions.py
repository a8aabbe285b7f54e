"""The deployments, defined once: served from a process (``steermoe serve``), registered with a process
work pool (``steermoe deploy``), and mirrored in ``prefect.yaml`` for ``prefect deploy --all`` and the
Docker work pool of the compose stack (``tests/test_deployments.py`` checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "DeploymentSpec", "SPECS", "RETRAIN_CRON", "load_flow", "runner_deployments", "deploy_spec", "deploy_all", "serve_all", "ensure_work_pool"]

ROOT = Path(__file__).resolve().parents[1]
# Mondays 06:00 UTC: a weekly look at whether the prompt sets changed since the champion was trained.
RETRAIN_CRON = "0 6 * * 1"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # "path/to/file.py:flow_function", relative to the repository root
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    tags: tuple[str, ...] = ("steermoe",)


SPECS = (
    DeploymentSpec(
        "safety-pipeline",
        "flows/pipeline.py:safety_pipeline",
        "Validate prompts, collect routing, select risky experts, fine-tune them, evaluate and register a challenger.",
        {"config_path": "configs/demo.yaml"},
    ),
    DeploymentSpec(
        "retrain-if-prompts-changed",
        "flows/retrain.py:retrain_if_prompts_changed",
        "Scheduled: re-run the pipeline when the prompt sets differ from the champion's, then offer the result for promotion.",
        {"config_path": "configs/demo.yaml", "promote_after": True},
        cron=RETRAIN_CRON,
    ),
    DeploymentSpec(
        "promote",
        "flows/promotion.py:promote",
        "Move the champion alias to a candidate if it passes the promotion rule; the decision is recorded either way.",
        {"candidate": "challenger", "config_path": "configs/demo.yaml"},
    ),
)


def load_flow(entrypoint: str):
    """Import the flow object an entrypoint names."""
    from prefect.flows import load_flow_from_entrypoint

    path, _, name = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{ROOT / path}:{name}")


def _parameters(spec: DeploymentSpec, config_path: str | None) -> dict[str, Any]:
    params = dict(spec.parameters)
    if config_path is not None and "config_path" in params:
        params["config_path"] = config_path
    return params


def runner_deployments(config_path: str | None = None) -> list:
    """The deployments as ``RunnerDeployment`` objects (for ``serve``)."""
    return [
        load_flow(s.entrypoint).to_deployment(
            name=s.name, cron=s.cron, parameters=_parameters(s, config_path), description=s.description, tags=list(s.tags)
        )
        for s in SPECS
    ]


def ensure_work_pool(name: str, pool_type: str = "process") -> None:
    """Create the work pool unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))


def deploy_spec(spec: DeploymentSpec, work_pool: str = "steermoe-process", config_path: str | None = None, **options: Any) -> str:
    """Register one deployment with ``work_pool``; ``options`` go to ``Flow.deploy`` and win over the
    spec (e.g. ``name``, ``interval`` instead of the cron, ``parameters``, ``concurrency_limit``)."""
    flow = load_flow(spec.entrypoint)
    source = flow.from_source(source=str(ROOT), entrypoint=spec.entrypoint)
    settings: dict[str, Any] = dict(
        name=spec.name, cron=spec.cron, parameters=_parameters(spec, config_path), description=spec.description, tags=list(spec.tags)
    )
    if "interval" in options:
        settings.pop("cron")
    settings.update(options)
    return str(source.deploy(work_pool_name=work_pool, build=False, push=False, print_next_steps=False, ignore_warnings=True, **settings))


def deploy_all(work_pool: str = "steermoe-process", config_path: str | None = None) -> dict[str, str]:
    """Register every deployment with ``work_pool`` (a process pool running the code in this checkout)."""
    ensure_work_pool(work_pool)
    return {spec.name: deploy_spec(spec, work_pool, config_path) for spec in SPECS}


def serve_all(config_path: str | None = None) -> None:
    """Serve every deployment from this process until interrupted."""
    from prefect import serve

    serve(*runner_deployments(config_path))
