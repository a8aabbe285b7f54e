"""`steermoe stack` in bad situations: one clear line, a non-zero exit, no traceback, nothing left running.
Each case has a stack folder of its own; none of them starts more than Postgres."""

from __future__ import annotations

import re
import socket
import subprocess

from steermoe.stack import StackLayout
from tests.stack_fixtures import cli, free_ports, needs_postgres, one_line_error, stack_processes


def _ports() -> list[str]:
    return [f"--{name}-port={port}" for name, port in zip(("postgres", "prefect", "mlflow"), free_ports(3))]


def test_a_port_already_in_use_is_named_with_the_option_that_moves_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("stack", "up", "--dir", str(tmp_path / "s"), *_ports(), f"--prefect-port={port}")
    line = one_line_error(done)
    assert f"port {port}" in line and "(prefect)" in line and "--prefect-port" in line
    assert done.returncode == 3
    assert stack_processes(tmp_path / "s") == []


def test_missing_postgres_binaries_say_how_to_install_them(tmp_path):
    done = cli("stack", "up", "--dir", str(tmp_path / "s"), *_ports(), env={"STEERMOE_PG_BIN": str(tmp_path / "no-such-bin")})
    line = one_line_error(done)
    assert "PostgreSQL server binaries" in line and "apt-get install postgresql" in line and "STEERMOE_PG_BIN" in line
    assert stack_processes(tmp_path / "s") == []


def test_down_when_nothing_runs_says_so(tmp_path):
    done = cli("stack", "down", "--dir", str(tmp_path / "never-started"))
    assert "no stack is running" in one_line_error(done) and done.returncode == 3
    assert "no stack in" in one_line_error(cli("stack", "status", "--dir", str(tmp_path / "never-started")))


def test_stale_pid_files_of_a_crashed_up_are_reported_and_never_signal_a_reused_pid(tmp_path):
    folder = tmp_path / "crashed"
    layout = StackLayout.at(folder)
    layout.make()
    layout.write_state({"ports": {"postgres": 1, "prefect": 2, "mlflow": 3}, "urls": {"postgres": "postgresql://x@127.0.0.1:1", "prefect": "http://127.0.0.1:2", "prefect_api": "http://127.0.0.1:2/api", "mlflow": "http://127.0.0.1:3"}})
    gone = subprocess.Popen(["true"])
    gone.wait()
    # A live process that is not the stack's (as when the pid of a crashed service was reused): never touched.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        layout.pid_file("postgres").write_text(f"{gone.pid}\n")
        layout.pid_file("prefect").write_text(f"{bystander.pid}\n")
        status = cli("stack", "status", "--dir", str(folder))
        assert status.returncode == 1 and status.stdout.count("stale pid file") == 2, status.stdout
        done = cli("stack", "down", "--dir", str(folder))
        assert "no stack is running" in one_line_error(done)
        assert "removed the stale pid file of postgres" in done.stdout and "removed the stale pid file of prefect" in done.stdout
        assert not layout.pid_file("postgres").exists() and not layout.pid_file("prefect").exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@needs_postgres
def test_a_server_that_does_not_become_healthy_in_time_is_named_with_its_log_and_stopped(tmp_path):
    folder = tmp_path / "slow"
    try:
        done = cli("stack", "up", "--dir", str(folder), *_ports(), "--timeout", "0")
        line = one_line_error(done)
        # Whichever server is first to be asked (Postgres may answer at once): named, with its log.
        found = re.match(r"error: (postgres|prefect|mlflow) did not become healthy within 0 s", line)
        assert found and f"{found[1]}.log" in line, line
        assert stack_processes(folder) == []
        status = cli("stack", "status", "--dir", str(folder))
        assert status.returncode == 1 and status.stdout.count("stopped") == 4
    finally:
        cli("stack", "down", "--dir", str(folder), "--delete-data")
