"""``steermoe demo-model`` through the real entry point."""

import subprocess
import sys


def steermoe(*args):
    return subprocess.run([sys.executable, "-m", "steermoe", *args], capture_output=True, text=True)


def test_demo_model_out_builds_the_same_model(tmp_path, tiny_demo_model):
    out = steermoe("demo-model", "--out", str(tmp_path / "m"), "--size", "tiny")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == (tiny_demo_model / "model.safetensors").read_bytes()


def test_bad_arch_is_one_line_and_exit_2(tmp_path):
    out = steermoe("demo-model", "--out", str(tmp_path / "m"), "--arch", "llama")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "llama" in lines[0] and "qwen3_moe" in lines[0]
    assert not (tmp_path / "m").exists()


def test_demo_model_copies_the_shipped_build_into_the_cache(tmp_path):
    from steermoe.demo.shipped import SHIPPED_DIR

    out = steermoe("demo-model", "--cache-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    path = tmp_path / "demo-models" / out.stdout.strip().rsplit("/", 1)[-1]
    assert out.stdout.strip() == str(path) and "package's build" in out.stderr
    assert (path / "model.safetensors").read_bytes() == (SHIPPED_DIR / path.name / "model.safetensors").read_bytes()
