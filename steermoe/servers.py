"""Servers a run talks to, checked before any work starts: a clear line within seconds instead of a
client retrying for minutes. Also the one place that hides credentials in URLs shown to people or logs."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

from steermoe.errors import InputError

__all__ = ["CONNECT_TIMEOUT_S", "redact_url", "check_reachable", "check_tracking_server", "check_prefect_api"]

CONNECT_TIMEOUT_S = 5.0
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")


def redact_url(text: str) -> str:
    """``postgresql://user:secret@db/mlflow`` -> ``postgresql://user:***@db/mlflow`` (anywhere in ``text``)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def check_reachable(url: str, what: str, how_to_fix: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to the URL's host and port; :class:`InputError` if that fails."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise InputError(f"{what}: {redact_url(url)} is unreachable ({reason}, waited at most {timeout:.0f} s); {how_to_fix}") from None


def check_tracking_server(tracking_cfg) -> None:
    """An MLflow server named by ``tracking.mlflow_uri`` or ``$MLFLOW_TRACKING_URI`` must answer (SQLite and file
    stores need no check)."""
    uri, key = (tracking_cfg.mlflow_uri, "tracking.mlflow_uri") if tracking_cfg.mlflow_uri else (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI")
    if uri and uri.startswith(("http://", "https://")):
        check_reachable(uri, key, "start the MLflow server (`docker compose up -d mlflow`), or unset it to track to SQLite under the cache dir")


def check_prefect_api() -> None:
    """A Prefect API named by ``$PREFECT_API_URL`` must answer (unset: Prefect starts a temporary local one)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        check_reachable(url, "PREFECT_API_URL", "start `prefect server start` (or docker compose up), or unset it to run on a temporary local API")
