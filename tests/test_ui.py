"""Real browser: a Prefect server on loopback, `steermoe serve` registering the deployments, and headless
Chromium (playwright-core) finding the pipeline deployment and its parameters in the UI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

UI_DIR = Path(__file__).resolve().parent / "ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and shutil.which("node") and (UI_DIR / "node_modules" / "playwright-core").exists()),
        reason="needs chromium, node and `npm install` in tests/ui",
    ),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, env, log):
    # Own process group: both commands start children (uvicorn, runners) that must go with them.
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for(fn, what, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def test_pipeline_deployment_appears_in_the_prefect_ui_with_its_parameters(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_API_URL=f"{base}/api")
    root = Path(__file__).resolve().parents[1]
    server = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, open(tmp_path / "server.log", "w"))
    served = None
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/api/health", timeout=2).status == 200, "the Prefect server")
        served = start([sys.executable, "-m", "steermoe", "serve"], {**env, "PYTHONPATH": str(root)}, open(tmp_path / "serve.log", "w"))

        def deployments():
            req = urllib.request.Request(f"{base}/api/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"})
            return [d["name"] for d in json.loads(urllib.request.urlopen(req, timeout=5).read())]

        assert "safety-pipeline" in wait_for(deployments, "the served deployments")
        out = subprocess.run(
            ["node", str(UI_DIR / "prefect_ui_check.mjs"), base, "safety-pipeline"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "CHROMIUM": CHROMIUM}, cwd=UI_DIR,
        )
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["listed"], seen
        assert "config_path" in seen["parameters"] and "configs/demo.yaml" in seen["parameters"], seen
    finally:
        if served is not None:
            stop(served)
        stop(server)
