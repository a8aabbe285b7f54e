import json
import subprocess
import sys

import pytest

from tests.conftest import make_prompts


def steermoe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "steermoe", *args], capture_output=True, text=True, cwd=cwd)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_passes_and_fails(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", make_prompts())
    out = steermoe("validate", str(good))
    assert out.returncode == 0, out.stderr
    assert "validation passed" in out.stdout

    rows = make_prompts()
    rows[0]["label"] = "dunno"
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = steermoe("validate", str(bad), "--json", str(tmp_path / "report.json"))
    assert out.returncode == 1
    assert "label_in_set" in out.stdout and "s0" in out.stdout
    assert json.loads((tmp_path / "report.json").read_text())["success"] is False


@pytest.mark.parametrize(
    "setup,expected",
    [
        (lambda p: p / "missing.jsonl", "missing.jsonl: no such file"),
        (lambda p: (p / "d.jsonl").mkdir() or p / "d.jsonl", "is a directory"),
        (lambda p: (p / "x.jsonl").write_text("{oops\n") and p / "x.jsonl", "x.jsonl:1: not valid JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, setup, expected):
    out = steermoe("validate", str(setup(tmp_path)))
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_config_show(tmp_path):
    out = steermoe("config", "show", "--set", "finetune.learning_rate=0.5")
    assert out.returncode == 0, out.stderr
    assert "learning_rate: 0.5" in out.stdout
    (tmp_path / "c.yaml").write_text("selection:\n  topk: 3\n")
    out = steermoe("config", "show", "--config", str(tmp_path / "c.yaml"))
    assert out.returncode == 2
    assert "selection.topk: unknown key" in out.stderr


def test_the_cli_lets_idle_openmp_threads_sleep_unless_told_otherwise():
    """OMP_WAIT_POLICY is read once, when torch loads OpenMP: the CLI sets it first (PASSIVE), a user's choice wins."""
    import os

    code = "import os, steermoe.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-500:]
        assert out.stdout.strip() == expected
