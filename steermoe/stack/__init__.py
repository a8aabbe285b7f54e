"""A local team stack without Docker: PostgreSQL, a Prefect server and an MLflow tracking server on it,
and a Prefect process worker that runs the deployments, all on loopback with their state in one folder.

``steermoe stack up | down | status | logs`` (see :mod:`steermoe.cli.stack`). Nothing here imports
Prefect or MLflow: the services are processes, their health is asked over HTTP.
"""

from steermoe.stack.control import DEFAULT_CONFIG, ServiceState, UpResult, down, logs, running_urls, status, up
from steermoe.stack.layout import DEFAULT_PORTS, SERVICES, WORK_POOL, StackLayout, default_stack_dir

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_PORTS",
    "SERVICES",
    "WORK_POOL",
    "ServiceState",
    "StackLayout",
    "UpResult",
    "default_stack_dir",
    "down",
    "logs",
    "running_urls",
    "status",
    "up",
    "use_running_stack",
]


def use_running_stack() -> dict[str, str] | None:
    """Point this process's Prefect and MLflow clients at the stack when it is up (``PREFECT_API_URL``,
    ``MLFLOW_TRACKING_URI``; values already set win). Returns the stack's URLs, or None."""
    import os

    found = running_urls()
    if found is None:
        return None
    os.environ.setdefault("PREFECT_API_URL", found["prefect_api"])
    os.environ.setdefault("MLFLOW_TRACKING_URI", found["mlflow"])
    return found
